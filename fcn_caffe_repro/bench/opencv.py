"""OpenCV's dnn module as a benchmark runner: what a user with a .caffemodel and no Caffe most often
runs instead. It reads our writer's .caffemodel and our prototxt with its own Caffe importer.

OpenCV (opencv-python-headless 4.x) is an optional benchmark dependency: problem() says why it
cannot run, and the benchmark then leaves its rows out with that message.
"""
import os
import tempfile

import numpy as np


def problem():
    """None when cv2.dnn can run, else why not (for the benchmark's message)."""
    try:
        import cv2
    except ImportError as e:
        return f"OpenCV is not installed ({e}); pip install 'opencv-python-headless<5' for its column"
    if not hasattr(cv2, "dnn"):
        return f"this OpenCV ({cv2.__version__}) has no dnn module"
    if not hasattr(cv2.dnn, "readNetFromCaffe"):  # OpenCV 5.x dropped the Caffe importer
        return (f"this OpenCV ({cv2.__version__}) has no Caffe importer (cv2.dnn.readNetFromCaffe); "
                "pip install 'opencv-python-headless<5' for its column")
    return None


def version():
    import cv2
    return cv2.__version__


class OpenCVNet:
    """The CaffeNet `net` (its prototxt and current weights) loaded into cv2.dnn through files in a
    temporary folder, deleted once read; run(inputs) returns the net's outputs as numpy arrays."""

    def __init__(self, net, threads=0):
        import cv2
        if threads:
            cv2.setNumThreads(threads)
        self.outputs = list(net.outputs)
        with tempfile.TemporaryDirectory(prefix="fcn-bench-opencv-") as tmp:
            proto, weights = os.path.join(tmp, "deploy.prototxt"), os.path.join(tmp, "weights.caffemodel")
            with open(proto, "w") as fh:
                fh.write(net.to_prototxt())
            net.save_caffemodel(weights)
            self.net = cv2.dnn.readNetFromCaffe(proto, weights)
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run(self, inputs):
        """{output name: array} for {input name: N x C x H x W float32 tensor or array}."""
        for name, x in inputs.items():
            self.net.setInput(np.ascontiguousarray(np.asarray(x, dtype=np.float32)), name)
        outs = self.net.forward(self.outputs)
        return dict(zip(self.outputs, outs))
