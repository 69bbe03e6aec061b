"""Judging samples: fidelity and quality metrics (``metrics``: PSNR, SSIM, Frechet distance, the
digit classifier) and the small models bundled with the package (``bundled``: SkipDiT, DiT,
LatteSkip and the classifier, trained on the digits) that the demo, the tests and the benchmarks
use."""
