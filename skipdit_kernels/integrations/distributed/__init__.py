"""Sampling across processes and machines with ``torch.distributed`` (launched by ``torchrun``):

- ``sample_ddp``: data parallel. The samples are cut into global batches; batch ``b`` draws its
  noise and (unless given) its class labels from seeds derived from ``(seed, b)`` only, and the
  batches still to do are dealt round-robin to the ranks, so the samples do not depend on the world
  size (1 process and 8 give the same file). Each batch is one ``sample()`` call, i.e. one request
  with its own Skip-Cache state and executor buffers. Rank 0 receives every finished batch, writes
  it to ``out_dir/batches/`` (which makes a stopped run resumable: written batches are skipped) and
  assembles ``out_dir/samples.npz`` at the end (``arr_0``: uint8 N x H x W x 3 images as FID tools
  read them, or float32 latents without a VAE; ``labels``: int64 N).
- ``sample_cfg_parallel``: one request split across two ranks for classifier-free guidance: rank 0
  runs the conditional half and rank 1 the unconditional half of every step, each through its own
  executor and cache (the Skip-Cache schedule depends on the step only, so both halves cache the
  same steps); one ``all_gather`` of the model output per step joins them, and both ranks apply the
  identical guidance and sampler update, so they hold the same ``x`` throughout.

- ``sample_sequence_parallel`` (``sequence.py``): one request's tokens sharded over the ranks
  (DeepSpeed-Ulysses attention), optionally combined with CFG-parallel.

The process group comes from the environment torchrun sets (``init_distributed``): NCCL when CUDA is
available, gloo otherwise, with a timeout on every collective so that a rank that dies or stalls
makes the others fail with ``DistributedSamplingError`` instead of waiting forever. A rank that
raises stops every rank of the call within seconds, each raising a ``DistributedSamplingError`` that
names the failing rank and its exception (``failures.RankFailures``, one mechanism for every entry
point).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import zipfile
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ...cache import SkipCache, as_skip_stack
from ...io.images import decode_latents, load_vae, to_uint8
from ...sampling.executor import SkipStackExecutor, executor_for
from ...sampling.sample import prepare_request, resolve_device, sample
from ...sampling.trajectory import SamplerTrajectory
from .failures import DistributedSamplingError, RankFailures
from .sequence import CommLog, SequenceShards, ShardedStack, _family

DEFAULT_TIMEOUT_S = 1800.0  # longest a rank waits in a collective: must exceed the slowest batch
BATCH_DIR = "batches"
MANIFEST = "run.json"


@dataclasses.dataclass(frozen=True)
class RankInfo:
    """This process's place in the run. ``world_size == 1`` without a process group (plain python)."""

    rank: int
    world_size: int
    device: torch.device
    timeout_s: float
    group: Any = None  # the process group (None: the default group)


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> RankInfo:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), unless one is initialised
    already; without those variables: one process, no group. ``backend``: "nccl" when CUDA is
    available, else "gloo". ``timeout_s`` bounds every collective of a group made here (for NCCL,
    with torch's default asynchronous error handling). The device is ``cuda:LOCAL_RANK`` when CUDA
    is available, else the CPU. DistributedSamplingError when the group cannot be joined."""
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices here")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return RankInfo(0, 1, device, float(timeout_s))
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            where = ", ".join(f"{k}={os.environ.get(k)}" for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"))
            raise DistributedSamplingError(
                f"could not join the {backend} process group ({where}) within {timeout_s:g} s: {exc}"
            ) from exc
    return RankInfo(dist.get_rank(), dist.get_world_size(), device, float(timeout_s))


def failures_of(info: RankInfo, what: str) -> RankFailures:
    """The failure channel of one call (``what``) on the ranks of ``info``."""
    return RankFailures(info.rank, info.world_size, info.timeout_s, what, info.group)


def _agree(failures: RankFailures, settings: dict) -> None:
    """DistributedSamplingError on every rank unless all ranks were given the same ``settings``."""
    if failures.world_size == 1:
        return
    everyone: list = [None] * failures.world_size
    failures.collective("comparing settings", lambda: dist.all_gather_object(everyone, settings, group=failures.group))
    for r, other in enumerate(everyone):
        differ = [k for k in everyone[0] if other.get(k) != everyone[0][k]]
        if differ:
            shown = ", ".join(f"{k}={other[k]!r} (rank 0: {everyone[0][k]!r})" for k in differ[:4])
            raise failures.raised_everywhere(f"rank {r} was started with other settings than rank 0: {shown}")


def _digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return (
        f"{tensor.dtype}{tuple(tensor.shape)}:" + hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()
    )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """Class, parameter count and the float64 sum of all parameters (8 significant digits): tells
    ranks, or a resumed run, that loaded different weights apart."""
    params = list(model.parameters())
    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) for p in params)
    return f"{type(model).__name__}:{sum(p.numel() for p in params)}:{total:.8g}"


def batch_seeds(seed: int, batch: int) -> tuple[int, int]:
    """(noise seed, label seed) of global batch ``batch``: numpy's SeedSequence of (seed, batch), so
    neighbouring batches and seeds get unrelated streams."""
    noise, labels = np.random.SeedSequence([int(seed), int(batch)]).generate_state(2, dtype=np.uint64)
    return int(noise), int(labels)


def output_kind(stack, latent_shape: tuple[int, ...], vae) -> str:
    """ "images" when samples become uint8 images (a VAE is given, or a 1/3-channel pixel model),
    else "latents"."""
    if vae is not None:
        return "images"
    if len(latent_shape) == 3 and stack.channel_dim == 1 and latent_shape[0] in (1, 3):
        return "images"  # a pixel-space model: its samples are images in [-1, 1]
    return "latents"


def fid_array(latents: torch.Tensor, kind: str, vae) -> np.ndarray:
    """Samples as FID tools read them: ``kind`` "images": (N, C, H, W) -> uint8 (N, H, W, 3), decoded
    by ``vae`` (an AutoencoderKL or None for pixels); "latents": float32 (N, C, H, W)."""
    if kind == "latents":
        return latents.float().cpu().numpy()
    images = decode_latents(latents, vae) if vae is not None else latents
    pixels = to_uint8(images)
    if pixels.shape[-1] == 1:  # grey: the 3 channels FID's Inception expects
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels


def _batch_path(out_dir: str, b: int) -> str:
    return os.path.join(out_dir, BATCH_DIR, f"batch-{b:06d}.npz")


def _write_batch(out_dir: str, b: int, samples: np.ndarray, labels: np.ndarray) -> None:
    path = _batch_path(out_dir, b)
    tmp = path + ".part.npz"
    np.savez(tmp, samples=samples, labels=labels)
    os.replace(tmp, path)  # a batch file is complete or absent


def _open_manifest(out_dir: str, manifest: dict, num_batches: int) -> list[int]:
    """Create or check ``out_dir/run.json``; the batches already written."""
    os.makedirs(os.path.join(out_dir, BATCH_DIR), exist_ok=True)
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        differ = [k for k in sorted(set(previous) | set(manifest)) if previous.get(k) != manifest.get(k)]
        if differ:
            shown = ", ".join(f"{k}: {previous.get(k)!r} then, {manifest.get(k)!r} now" for k in differ[:4])
            raise ValueError(
                f"{out_dir!r} holds a run with other settings ({shown}); use another --out-dir, or delete it to start over"
            )
    else:
        with open(path + ".part", "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        os.replace(path + ".part", path)
    return [b for b in range(num_batches) if os.path.exists(_batch_path(out_dir, b))]


def _assemble_npz(out_dir: str, path: str, num_batches: int, num_samples: int) -> None:
    """Stream the batch files into one .npz (``np.load`` reads it like ``np.savez``'s), without
    holding all samples in memory."""
    batches = [_batch_path(out_dir, b) for b in range(num_batches)]
    with np.load(batches[0]) as first:
        heads = {key: first[key] for key in ("samples", "labels")}
    tmp = path + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, name in (("samples", "arr_0"), ("labels", "labels")):
            head = heads[key]
            header = {"descr": np.lib.format.dtype_to_descr(head.dtype), "fortran_order": False,
                      "shape": (num_samples, *head.shape[1:])}  # fmt: skip
            written = 0
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for batch in batches:
                    with np.load(batch) as z:
                        part = z[key]
                    if part.dtype != head.dtype or part.shape[1:] != head.shape[1:]:
                        raise ValueError(
                            f"{batch} holds {key} {part.dtype} {part.shape}, expected {head.dtype} (n, {head.shape[1:]})"
                        )
                    f.write(np.ascontiguousarray(part).tobytes())
                    written += len(part)
            if written != num_samples:
                raise ValueError(f"the batch files in {out_dir!r} hold {written} samples, expected {num_samples}")
    os.replace(tmp, path)


@torch.no_grad()
def sample_ddp(
    model,
    num_samples: int,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    labels: Sequence[int] | None = None,
    image_size: int | None = None,
    steps: int = 250,
    method: str = "ddpm",
    cfg_scale: float = 4.0,
    cache: SkipCache | int | None = None,
    seed: int = 0,
    eta: float = 0.0,
    guide_all_channels: bool = False,
    vae: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    cuda_graphs: bool | str = "auto",
    progress: bool = True,
    npz_name: str = "samples.npz",
    info: RankInfo | None = None,
) -> str | None:
    """Sample ``num_samples`` class-conditional samples on every rank of the run (``init_distributed``
    unless ``info`` is given; also works in one plain process) and write them, on rank 0, to
    ``out_dir/npz_name``. Returns that path on rank 0, None on the others.

    ``labels``: ``num_samples`` class labels, or None for uniform ones (``model.num_classes``) drawn
    per batch from ``batch_seeds``. ``batch_size``: samples per ``sample()`` call (the last batch may
    be smaller); the sampler arguments are ``sample()``'s. ``vae``: a local AutoencoderKL folder;
    with it, or for a pixel model (1 or 3 channels), ``arr_0`` is uint8 (N, H, W, 3) (grey repeated
    to 3 channels), otherwise float32 latents (N, C, H, W).

    ``out_dir`` needs to exist on rank 0 only (the samples travel to rank 0 through the process
    group). A rerun with the same settings and ``out_dir`` resumes: written batches are not sampled
    again, on any world size; other settings are refused (ValueError) since they would mix samples.

    Every rank must be called with the same arguments (checked: DistributedSamplingError). Bad
    arguments: ValueError/TypeError before any sampling in one process; over several ranks any
    rank's error, bad arguments included, stops every rank within a sampling step with a
    DistributedSamplingError naming the rank, the batch and the exception (``failures``).
    """
    info = info or init_distributed()
    failures = failures_of(info, "sample_ddp")
    with failures.guard():
        return _sample_ddp(
            model,
            num_samples,
            out_dir,
            batch_size,
            labels,
            image_size,
            steps,
            method,
            cfg_scale,
            cache,
            seed,
            eta,
            guide_all_channels,
            vae,
            dtype,
            cuda_graphs,
            progress,
            npz_name,
            info,
            failures,
        )


class _CheckedExecutor(SkipStackExecutor):
    """``model``'s executor for one data-parallel call: after every sampling step it reads whether
    a peer failed (``RankFailures.check``), so a rank stops within a step of a peer's error instead
    of at the end of its batch."""

    def __init__(self, model, failures: RankFailures):
        super().__init__(model, _weak=True)
        self.failures = failures

    def run(self, *args, callback=None, **kwargs):
        def checked(k, planned):
            if callback is not None:
                callback(k, planned)
            self.failures.check()

        return super().run(*args, callback=checked, **kwargs)


def _sample_ddp(model, num_samples, out_dir, batch_size, labels, image_size, steps, method, cfg_scale, cache, seed, eta,
                guide_all_channels, vae, dtype, cuda_graphs, progress, npz_name, info, failures) -> str | None:  # fmt: skip
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    stack = as_skip_stack(model)
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (num_samples,):
            raise ValueError(
                f"labels must hold num_samples={num_samples} class labels, got shape {tuple(labels.shape)}"
            )
        stack.condition(labels)  # checks their dtype and range
    else:
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError(f"{type(model).__name__} has no num_classes to draw labels from; pass labels")
    probe = labels[:1] if labels is not None else [0]
    request = prepare_request(model, probe, image_size, steps, method, cfg_scale, cache, dtype, guide_all_channels, eta)
    cfg_scale, resolved_cache, latent, dtype = request.cfg_scale, request.cache, request.latent, request.dtype
    kind = output_kind(stack, latent, vae)
    vae_module = load_vae(vae, info.device) if vae is not None else None

    num_batches = -(-num_samples // batch_size)
    manifest = dict(
        num_samples=num_samples, batch_size=batch_size, seed=int(seed), image_size=image_size, steps=steps,
        method=method, cfg_scale=cfg_scale, eta=float(eta), cache=repr(resolved_cache),
        guide_all_channels=bool(guide_all_channels), dtype=str(dtype), output=kind,
        vae=None if vae is None else os.path.basename(os.path.normpath(os.fspath(vae))),
        labels=None if labels is None else _digest(labels.to(torch.int64)),
        model=weights_fingerprint(model),
    )  # fmt: skip
    _agree(failures, manifest)

    out_dir = os.fspath(out_dir)
    npz_path = os.path.join(out_dir, npz_name)
    state: list = [None, None]  # (error message, batches already written), from rank 0
    if info.rank == 0:
        try:
            state[1] = _open_manifest(out_dir, manifest, num_batches)
        except (OSError, ValueError) as exc:
            state[0] = exc
    if info.world_size > 1:
        failures.collective("starting", lambda: dist.broadcast_object_list(state, src=0, group=info.group))
    if state[0] is not None:
        raise failures.raised_everywhere(state[0])  # the same ValueError/OSError on every rank
    done = set(state[1])
    todo = [b for b in range(num_batches) if b not in done]

    executor = _CheckedExecutor(model, failures)

    def run_batch(b: int):
        start, stop = b * batch_size, min((b + 1) * batch_size, num_samples)
        noise_seed, label_seed = batch_seeds(seed, b)
        if labels is not None:
            y = labels[start:stop].to(torch.int64)
        else:
            y = torch.randint(0, num_classes, (stop - start,), generator=torch.Generator().manual_seed(label_seed))
        latents = sample(
            model, y, image_size=image_size, steps=steps, method=method, cfg_scale=cfg_scale, cache=resolved_cache,
            seed=noise_seed, device=info.device, dtype=dtype, progress=False, guide_all_channels=guide_all_channels,
            eta=eta, cuda_graphs=cuda_graphs, executor=executor,
        )  # fmt: skip
        return fid_array(latents, kind, vae_module), y.numpy()

    bar = None
    if progress and info.rank == 0:
        from tqdm.auto import tqdm

        written = sum(min((b + 1) * batch_size, num_samples) - b * batch_size for b in done)
        bar = tqdm(total=num_samples, initial=written, desc=f"sampling on {info.world_size} rank(s)", unit="sample")
    try:
        for first in range(0, len(todo), info.world_size):
            mine = todo[first + info.rank] if first + info.rank < len(todo) else None
            result: tuple = (mine, None)
            if mine is not None:
                failures.where = f"batch {mine}"
                result = (mine, run_batch(mine))  # an error here stops every rank (failures.guard)
            failures.where = None
            gathered = [result]
            if info.world_size > 1:
                gathered = [None] * info.world_size if info.rank == 0 else None
                failures.collective("sending a batch to rank 0",
                                    lambda: dist.gather_object(result, gathered, dst=0, group=info.group))  # fmt: skip
            if info.rank == 0:
                for b, (samples, y) in (g for g in gathered if g[0] is not None):
                    failures.where = f"writing batch {b} to {out_dir!r}"
                    _write_batch(out_dir, b, samples, y)
                    if bar is not None:
                        bar.update(len(y))
                failures.where = None
    finally:
        if bar is not None:
            bar.close()
    if info.rank != 0:
        return None
    _assemble_npz(out_dir, npz_path, num_batches, num_samples)
    return npz_path


class CFGParallelTrajectory:
    """A ``sampling.executor.Trajectory`` for one rank of a CFG-parallel pair: the executor runs this
    rank's half (model batch N, ``cfg`` False to it); ``model_output`` all-gathers both halves over
    ``group`` (conditional from its rank 0, unconditional from its rank 1) and applies ``inner``'s
    guidance to the joined 2N batch; the rest is ``inner``'s (a ``SamplerTrajectory`` with CFG).
    ``log``: a ``sequence.CommLog`` that counts the bytes sent.

    Eager only: the all_gather is a host call (gloo copies through CPU tensors); capturing NCCL
    collectives in a CUDA graph would need both ranks to capture and replay in lock step."""

    cfg = False

    def __init__(self, inner: SamplerTrajectory, failures: RankFailures, group=None, log: CommLog | None = None):
        if not inner.cfg:
            raise ValueError("CFG-parallel sampling needs cfg_scale > 1")
        self.inner = inner
        self.failures = failures
        self.group = group
        self.log = log
        self.timesteps = inner.timesteps
        self.key = ("cfg-parallel", inner.key)
        self._over_cpu = dist.get_backend(group) == "gloo"

    def coefficients(self) -> torch.Tensor:
        return self.inner.coefficients()

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        return self.inner.noise(shape)

    def model_output(self, out: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        mine = out.detach().cpu() if self._over_cpu else out.contiguous()
        halves = [torch.empty_like(mine) for _ in range(2)]
        what = "exchanging the CFG halves of the model output"
        self.failures.collective(what, lambda: dist.all_gather(halves, mine, group=self.group))
        if self.log is not None:
            self.log.add(what, mine.numel() * mine.element_size())
        return self.inner.model_output(torch.cat(halves).to(out.device), coef)

    def update(
        self, x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        return self.inner.update(x, model_output, coef, noise)


@dataclasses.dataclass
class ParallelStats:
    """What a CFG- / sequence-parallel call sent: bytes this rank sent to other ranks at each step
    (``bytes_per_step``, with ``full_steps[k]`` whether step k ran every unit) and in all, by
    collective (``bytes_by_collective``, ``calls_by_collective``); ``status_exchanges``: the 16-byte
    status all-reduces of the failure channel (``failures.STATUS_BYTES``), not in the byte counts.
    ``sequence_parallel`` / ``cfg_parallel``: the split this rank ran."""

    sequence_parallel: int
    cfg_parallel: bool
    bytes_per_step: list[int]
    full_steps: list[bool]
    bytes_by_collective: dict[str, int]
    calls_by_collective: dict[str, int]
    status_exchanges: int


_SPLIT_GROUPS: dict[tuple, tuple] = {}


def _split_groups(info: RankInfo, cfg: int, sp: int) -> tuple:
    """(this rank's sequence group, its CFG group) for ``cfg`` x ``sp`` ranks: sequence groups are
    consecutive ranks, CFG pairs ranks ``sp`` apart (made once per layout; every rank must reach
    this at the same call)."""
    ranks = list(range(info.world_size)) if info.group is None else dist.get_process_group_ranks(info.group)
    key = (tuple(ranks), cfg, sp)
    if key not in _SPLIT_GROUPS:
        if cfg == 1:
            _SPLIT_GROUPS[key] = (info.group, None)
        elif sp == 1:
            _SPLIT_GROUPS[key] = (None, info.group)
        else:
            seq, _ = dist.new_subgroups_by_enumeration([ranks[i * sp : (i + 1) * sp] for i in range(cfg)])
            pair, _ = dist.new_subgroups_by_enumeration([[ranks[j], ranks[sp + j]] for j in range(sp)])
            _SPLIT_GROUPS[key] = (seq, pair)
    return _SPLIT_GROUPS[key]


@torch.no_grad()
def sample_sequence_parallel(
    model,
    conditioning,
    image_size: int | None = None,
    steps: int = 250,
    method: str = "ddpm",
    cfg_scale: float = 4.0,
    cache: SkipCache | int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    guide_all_channels: bool = False,
    eta: float = 0.0,
    cfg_parallel: bool = False,
    info: RankInfo | None = None,
    return_stats: bool = False,
):
    """``sample()`` for one request split over all ranks of the run (``init_distributed`` unless
    ``info`` is given): with ``cfg_parallel`` (classifier-free guidance, an even world size) the
    ranks form two halves, the first running the conditional and the second the unconditional model
    batch, joined by one all_gather of the model output per step; within each half (all ranks
    without ``cfg_parallel``) the tokens are sharded over the ranks (``sequence.py``: DeepSpeed-
    Ulysses attention, the Skip-Cache state sharded with the tokens). ``conditioning`` is
    ``sample()``'s (class labels, or a dict of text embeddings for LatteT2VSkip); the other
    arguments are ``sample()``'s. Supported models: DiT, SkipDiT, LatteSkip, LatteT2VSkip (a
    sequence split of 1 runs any skip stack).

    Every rank must make the same call (checked). Returns the latents (N, *latent) float32, the
    same on every rank and equal to ``sample()``'s within fp32 rounding, and with ``return_stats``
    a ``ParallelStats`` of the bytes this rank sent. Eager (no CUDA graphs). ValueError for bad
    arguments (heads not divisible by the sequence split, ``cfg_parallel`` without guidance or on an
    odd world size); DistributedSamplingError on every rank when a rank fails (naming it and its
    error) or the ranks disagree."""
    info = info or init_distributed()
    failures = failures_of(
        info, "sample_cfg_parallel" if cfg_parallel and info.world_size == 2 else "sample_sequence_parallel"
    )
    with failures.guard():
        return _sample_split(model, conditioning, image_size, steps, method, cfg_scale, cache, seed, dtype, progress,
                             guide_all_channels, eta, cfg_parallel, info, failures, return_stats)  # fmt: skip


def _sample_split(model, conditioning, image_size, steps, method, cfg_scale, cache, seed, dtype, progress,
                  guide_all_channels, eta, cfg_parallel, info, failures, return_stats):  # fmt: skip
    cfg = 2 if cfg_parallel else 1
    if info.world_size % cfg:
        raise ValueError(f"CFG-parallel sampling needs an even number of ranks, this run has {info.world_size}")
    sp = info.world_size // cfg
    request = prepare_request(model, conditioning, image_size, steps, method, cfg_scale, cache, dtype,
                              guide_all_channels, eta)  # fmt: skip
    if cfg_parallel and request.cfg_scale <= 1:
        raise ValueError(f"CFG-parallel sampling needs cfg_scale > 1 (there is no unconditional half), got {cfg_scale}")
    family = _family(model) if sp > 1 else None
    if family is not None and family.heads % sp:
        raise ValueError(
            f"sequence parallel (Ulysses) over {sp} ranks needs the attention heads divisible by {sp}; "
            f"{type(model).__name__} has {family.heads} heads: use a sequence split that divides them"
        )
    cond, diffusion, cache, dtype = request.cond, request.diffusion, request.cache, request.dtype
    _agree(failures, dict(cond={k: _digest(v) for k, v in cond.items()}, latent=request.latent, steps=steps,
                          method=method, cfg_scale=request.cfg_scale, eta=float(eta), cache=repr(cache), seed=int(seed),
                          dtype=str(dtype), guide_all_channels=bool(guide_all_channels), split=(cfg, sp),
                          model=weights_fingerprint(model)))  # fmt: skip
    seq_group, cfg_group = _split_groups(info, cfg, sp)
    device = resolve_device(info.device)
    unconditional = cfg_parallel and info.rank >= sp
    if cfg_parallel and unconditional:
        cond = request.stack.null_condition(cond)
    elif not cfg_parallel and request.cfg_scale > 1:
        uncond = request.stack.null_condition(cond)
        cond = cond.cat(uncond)
    x, trajectory = request.start(model, seed, device)  # as sample(): x_T first, then the noise
    cond = cond.to(device)
    log = CommLog()
    if cfg_parallel:
        trajectory = CFGParallelTrajectory(trajectory, failures, cfg_group, log)
    stack, active = request.stack, contextlib.nullcontext()
    if family is not None:
        shards = SequenceShards(
            None, info.rank % sp, sp, seq_group, failures, log, dist.get_backend(seq_group) == "gloo"
        )
        stack, active = ShardedStack(stack, family, shards), shards.active(family.attention)
    executor = SkipStackExecutor(stack) if family is not None else executor_for(model)
    per_step, full_steps = [], []
    bar = None
    if progress and info.rank == 0:
        from tqdm.auto import tqdm

        split = " x ".join(filter(None, ["CFG over 2" if cfg_parallel else "", f"tokens over {sp}" if sp > 1 else ""]))
        bar = tqdm(total=diffusion.num_steps, desc=f"{diffusion.method} sampling, {split or '1'} rank(s)", unit="step")

    def advance(k, planned):
        per_step.append(log.mark())
        full_steps.append(planned is None or planned.full)
        if bar is not None:
            bar.update(1)

    try:
        with active:
            x, _ = executor.run(trajectory, x, cond, dtype, cache=cache, graphs=False, callback=advance)
    finally:
        if bar is not None:
            bar.close()
    if not return_stats:
        return x
    return x, ParallelStats(
        sp, cfg_parallel, per_step, full_steps, dict(log.totals), dict(log.calls), failures.exchanges
    )


@torch.no_grad()
def sample_cfg_parallel(
    model,
    class_labels,
    image_size: int | None = None,
    steps: int = 250,
    method: str = "ddpm",
    cfg_scale: float = 4.0,
    cache: SkipCache | int | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    guide_all_channels: bool = False,
    eta: float = 0.0,
    info: RankInfo | None = None,
) -> torch.Tensor:
    """``sample()`` with classifier-free guidance for one request, split over the two ranks of the
    run (``init_distributed`` unless ``info`` is given): rank 0 runs the conditional and rank 1 the
    unconditional model batch of every step, each with its own Skip-Cache state; one all_gather of
    the model output per step (``sample_sequence_parallel`` with ``cfg_parallel`` on 2 ranks). Both
    ranks must make the same call (checked). Returns the latents (N, *latent) float32 on both ranks,
    equal to ``sample()``'s within float rounding (the model runs batches of N instead of 2N).
    Eager (no CUDA graphs). ValueError for bad arguments or a world size other than 2;
    DistributedSamplingError on both ranks when a rank fails (naming it and its error) or they
    disagree."""
    info = info or init_distributed()
    if info.world_size != 2:
        raise ValueError(f"CFG-parallel sampling runs on exactly 2 ranks, this run has {info.world_size}")
    return sample_sequence_parallel(model, class_labels, image_size, steps, method, cfg_scale, cache, seed, dtype, progress,
                                    guide_all_channels, eta, cfg_parallel=True, info=info)  # fmt: skip
