"""Crystal property models split into a transferable encoder and a task head."""

from kappaflow.models.base import Encoder, GraphMismatchError, InputKind, KappaModel
from kappaflow.models.cgcnn import CGCNNEncoder, build_cgcnn
from kappaflow.models.descriptor_mlp import (
    CompositionBatch,
    DescriptorMLPEncoder,
    build_descriptor_mlp,
    composition_data,
)
from kappaflow.models.factory import (
    build_model,
    check_graph_settings,
    encoder_class,
    input_kind,
    model_names,
)
from kappaflow.models.heads import MLPHead
from kappaflow.models.megnet import MEGNetBlock, MEGNetEncoder, build_megnet
from kappaflow.models.sevennet import SevenNetEncoder, build_sevennet

__all__ = [
    "CGCNNEncoder",
    "CompositionBatch",
    "DescriptorMLPEncoder",
    "Encoder",
    "GraphMismatchError",
    "InputKind",
    "KappaModel",
    "MEGNetBlock",
    "MEGNetEncoder",
    "MLPHead",
    "SevenNetEncoder",
    "build_cgcnn",
    "build_descriptor_mlp",
    "build_megnet",
    "build_model",
    "build_sevennet",
    "check_graph_settings",
    "composition_data",
    "encoder_class",
    "input_kind",
    "model_names",
]
