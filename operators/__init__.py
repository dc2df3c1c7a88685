"""MONAI Deploy operators of the OCT glaucoma application, one per module."""

from operators._cuda_runtime import preload_cuda_runtime

preload_cuda_runtime()
