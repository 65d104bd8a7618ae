"""Exceptions raised by pydarknet.

Every error derives from :class:`DarknetError` and also from the built-in exception a user would
naturally catch, so ``except ValueError`` still works around a broken cfg.
"""


class DarknetError(Exception):
    """Base class of every error pydarknet raises."""


class CfgError(DarknetError, ValueError):
    """A .cfg or .data file is malformed; the message names the file, the line and the key."""


class WeightsError(DarknetError, OSError):
    """A .weights file has a bad header, is truncated, or is longer than the network."""


class LabelError(DarknetError, ValueError):
    """A label file has a malformed line or a value out of range; the message names file and line."""


class ImageError(DarknetError, ValueError):
    """An image cannot be decoded."""


class CudaError(DarknetError, RuntimeError):
    """The CUDA build is missing or a CUDA call failed."""


class DarknetIOError(DarknetError, OSError):
    """A file could not be read or written by the C core."""


class DarknetValueError(DarknetError, ValueError):
    """A bad argument reached the C core (a size, an index, a batch larger than the network's)."""


class DarknetArithmeticError(DarknetError, ArithmeticError):
    """A NaN or infinity appeared, e.g. a diverging training run."""


class ExportError(DarknetError, ValueError):
    """A network cannot be written in the requested format (ONNX); the message names the layer."""


class DataError(DarknetError, ValueError):
    """The training data cannot be used, e.g. a list in which no image (or label file) is usable."""


class DistributedError(DarknetError, RuntimeError):
    """Data-parallel training failed: a rank died or hung, a collective failed, or a transport is missing.
    The message names the rank(s) concerned."""
