"""The operators a job graph may call: pure tensor operations only.

A ``.pt2`` graph is JSON anyone can write, so it can name any registered operator, including
ones with side effects (``aten::from_file`` reads a file, ``aten::_print`` writes). Every node's
target must be on this allowlist. It holds what the model families in
:mod:`meshcompute.mesh.models` export to plus common pure ATen operations; random operations are
absent (a graph cannot carry a generator, so they would be nondeterministic and unverifiable),
and so are ``out=`` overloads, higher-order operators, custom namespaces and anything doing
I/O or returning uninitialised memory. Dropout-style operators are allowed only when the graph
fixes them to inference (``train=False`` / ``dropout_p=0``).
"""

from __future__ import annotations

import re

ATEN = frozenset({
    # the model families (mlp, convnet, transformer)
    "linear", "gelu", "conv2d", "batch_norm", "relu", "max_pool2d", "adaptive_avg_pool2d",
    "flatten", "add", "contiguous", "layer_norm", "mean", "permute", "reshape",
    "scaled_dot_product_attention", "select", "squeeze", "sym_size", "transpose", "unflatten",
    "unsqueeze", "view",
    # elementwise
    "abs", "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "clamp",
    "clamp_min", "clamp_max", "clip", "cos", "cosh", "div", "eq", "erf", "erfc", "exp", "exp2",
    "expm1", "floor", "floor_divide", "fmod", "frac", "ge", "gt", "isfinite", "isinf", "isnan",
    "le", "lerp", "log", "log10", "log1p", "log2", "logical_and", "logical_not", "logical_or",
    "logical_xor", "lt", "maximum", "minimum", "mul", "ne", "neg", "pow", "reciprocal",
    "remainder", "round", "rsqrt", "rsub", "sigmoid", "sign", "sin", "sinh", "sqrt", "square",
    "sub", "tan", "tanh", "trunc", "where", "bitwise_and", "bitwise_not", "bitwise_or",
    "bitwise_xor", "masked_fill", "nan_to_num", "addcmul", "addcdiv",
    # activations and normalisation
    "elu", "glu", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu", "log_sigmoid", "mish",
    "prelu", "relu6", "selu", "celu", "silu", "softplus", "softshrink", "hardshrink", "threshold",
    "softmax", "log_softmax", "_softmax", "_log_softmax", "group_norm", "instance_norm",
    "native_layer_norm", "native_group_norm", "native_batch_norm",
    "_native_batch_norm_legit_no_training", "rms_norm", "cudnn_batch_norm",
    # linear algebra and convolution
    "addmm", "addmv", "addbmm", "baddbmm", "bmm", "matmul", "mm", "mv", "dot", "einsum",
    "outer", "conv1d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "embedding", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
    # pooling and resampling
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool3d",
    "max_pool2d_with_indices", "adaptive_avg_pool1d", "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "pixel_shuffle",
    "pixel_unshuffle", "upsample_nearest2d", "upsample_bilinear2d", "constant_pad_nd", "pad",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d",
    # reductions
    "all", "any", "amax", "amin", "argmax", "argmin", "cumsum", "cumprod", "logsumexp", "max",
    "min", "norm", "linalg_vector_norm", "prod", "std", "std_mean", "sum", "var", "var_mean",
    "topk", "sort", "argsort",
    # shapes, views and copies
    "alias", "cat", "chunk", "clone", "detach", "diagonal", "expand", "expand_as", "flip",
    "gather", "index", "index_select", "lift_fresh_copy", "narrow", "repeat", "roll", "slice",
    "split", "split_with_sizes", "stack", "t", "tensor_split", "tile", "tril", "triu",
    "type_as", "unbind", "_unsafe_view", "view_as", "movedim", "swapaxes", "hstack", "vstack",
    "scatter", "scatter_add", "index_add", "index_put", "_to_copy", "to", "one_hot",
    # constructors (deterministic contents)
    "arange", "full", "full_like", "ones", "ones_like", "zeros", "zeros_like", "scalar_tensor",
    "fill", "new_zeros", "new_ones", "new_full", "linspace",
    # symbolic shapes and export's runtime checks
    "sym_stride", "sym_numel", "sym_storage_offset", "_assert_scalar", "_assert_tensor_metadata",
    "sym_constrain_range", "sym_constrain_range_for_size",
    # losses (training jobs: the program returns its loss)
    "cross_entropy_loss", "nll_loss", "nll_loss_nd", "nll_loss2d", "mse_loss", "l1_loss",
    "smooth_l1_loss", "huber_loss", "binary_cross_entropy_with_logits", "kl_div",
    # inference-only forms of dropout (see INFERENCE_ONLY)
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
})

INFERENCE_ONLY: dict[str, tuple[str, object]] = {
    "dropout": ("train", False),
    "feature_dropout": ("train", False),
    "alpha_dropout": ("train", False),
    "feature_alpha_dropout": ("train", False),
    "scaled_dot_product_attention": ("dropout_p", 0.0),
    "_scaled_dot_product_flash_attention": ("dropout_p", 0.0),
    "_scaled_dot_product_efficient_attention": ("dropout_p", 0.0),
    "_scaled_dot_product_flash_attention_for_cpu": ("dropout_p", 0.0),
}
"""Operator -> (argument, required value) when the operator is random otherwise. A missing
argument takes the operator's default (``dropout_p`` defaults to 0; ``train`` has none)."""

PYTHON_OPERATORS = frozenset({
    "_operator.add", "_operator.sub", "_operator.mul", "_operator.floordiv", "_operator.mod",
    "_operator.truediv", "_operator.neg", "_operator.pos", "_operator.eq", "_operator.ne",
    "_operator.lt", "_operator.le", "_operator.gt", "_operator.ge", "_operator.and_",
    "_operator.or_", "_operator.not_", "_operator.getitem", "math.ceil", "math.floor",
    "math.trunc", "math.sqrt", "torch.sym_max", "torch.sym_min", "torch.sym_float",
    "torch.sym_int", "torch.sym_not", "torch.sym_sqrt", "torch.sym_ite", "torch.sym_sum",
})

WRITING_OVERLOADS = frozenset({
    ("max", "dim_max"), ("min", "dim_min"), ("topk", "values"), ("sort", "values"),
    ("sort", "values_stable"), ("sort", "int"), ("sort", "float"), ("sort", "Tensor"),
    ("sort", "bool"), ("sort", "str"), ("sort", "any"),
})
"""Overloads of allowed operators that write to an argument without ``out`` in their name
(``out=`` forms naming their outputs, and ``sort`` of a Python list in place). The loader
also refuses any call whose schema writes to an argument."""

_ATEN_TARGET = re.compile(
    r"^torch\.ops\.aten\.([A-Za-z0-9_]{1,100})\.([A-Za-z][A-Za-z0-9_]{0,59})$"
)


def check_target(target: object) -> str | None:
    """None when ``target`` may be called, else the reason it may not."""
    if not isinstance(target, str):
        return f"operator target must be a string, got {type(target).__name__}"
    if target in PYTHON_OPERATORS:
        return None
    if target.startswith("torch.ops.higher_order."):
        return f"higher-order operator {target!r} is not allowed"
    match = _ATEN_TARGET.match(target)
    if match is None:
        return f"operator {target!r} is not on the allowlist of pure tensor operations"
    name, overload = match.groups()
    if name not in ATEN:
        return f"operator aten::{name} is not on the allowlist of pure tensor operations"
    if overload == "out" or overload.startswith("out") or overload.endswith("out") or (
        (name, overload) in WRITING_OVERLOADS
    ):
        return f"out= overload aten::{name}.{overload} is not allowed"
    return None


def aten_name(target: str) -> str | None:
    match = _ATEN_TARGET.match(target)
    return match.group(1) if match else None
