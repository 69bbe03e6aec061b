from setuptools import find_packages, setup

setup(
    name="skipdit-kernels",
    version="0.1.0",
    description="Fused kernels, Skip-Cache and samplers for Skip-DiT diffusion transformers",
    packages=find_packages(include=["skipdit_kernels", "skipdit_kernels.*"]),
    package_data={"skipdit_kernels": ["assets/*"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "tqdm", "safetensors"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "images": ["pillow"],
    },
    entry_points={"console_scripts": ["skipdit=skipdit_kernels.cli:main"]},
)
