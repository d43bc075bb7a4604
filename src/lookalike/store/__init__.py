"""Where everything an index is made from lives: image records, every engine's features, one journal
per engine and the backlog of features still owed, in one LMDB environment (`feature_store.py`)."""

from .backlog import Pending
from .feature_store import EngineFeatures, FeatureStore
from .records import MAX_FILE_NAME_BYTES, MAX_IMAGE_ID, ImageRecord, check_file_name, check_image_id

__all__ = [
    "MAX_FILE_NAME_BYTES",
    "MAX_IMAGE_ID",
    "EngineFeatures",
    "FeatureStore",
    "ImageRecord",
    "Pending",
    "check_file_name",
    "check_image_id",
]
