"""Detector output decoders (YOLOv8, YOLOv5, boxes + scores) and NMS, in plain numpy."""

from .layouts import (
    BOX_FORMATS,
    DECODERS,
    Decoder,
    OutputInfo,
    Proposals,
    choose_decoder,
    cxcywh_to_xyxy,
    to_xyxy,
)
from .nms import box_iou, nms

__all__ = ["BOX_FORMATS", "DECODERS", "Decoder", "OutputInfo", "Proposals", "box_iou",
           "choose_decoder", "cxcywh_to_xyxy", "nms", "to_xyxy"]
