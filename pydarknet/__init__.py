"""pydarknet: a Darknet-compatible YOLOv3 engine (C core, Python API) with the GIoU loss."""
from .errors import CfgError, CudaError, DarknetError, ImageError, LabelError, WeightsError
from .network import Network, get_threads, set_threads
from .detect import Detection, Detector
from .loss import yolo_loss

__version__ = "0.1.0"

__all__ = ["Network", "Detector", "Detection", "DarknetError", "CfgError", "WeightsError", "LabelError",
           "ImageError", "CudaError", "yolo_loss", "set_threads", "get_threads", "__version__"]
