"""Facts of caffe.proto that more than one reader needs: the V1 layer type enum and its V2 names,
and every message's field names (for the text reader's unknown-field check)."""
import warnings

from ..errors import PrototxtError

# V1LayerParameter.LayerType: name -> (number, V2 type string), as UpgradeV1LayerType maps them.
V1_TYPES = {
    "NONE": (0, ""), "ABSVAL": (35, "AbsVal"), "ACCURACY": (1, "Accuracy"),
    "ARGMAX": (30, "ArgMax"), "BNLL": (2, "BNLL"), "CONCAT": (3, "Concat"),
    "CONTRASTIVE_LOSS": (37, "ContrastiveLoss"), "CONVOLUTION": (4, "Convolution"),
    "DATA": (5, "Data"), "DECONVOLUTION": (39, "Deconvolution"), "DROPOUT": (6, "Dropout"),
    "DUMMY_DATA": (32, "DummyData"), "EUCLIDEAN_LOSS": (7, "EuclideanLoss"),
    "ELTWISE": (25, "Eltwise"), "EXP": (38, "Exp"), "FLATTEN": (8, "Flatten"),
    "HDF5_DATA": (9, "HDF5Data"), "HDF5_OUTPUT": (10, "HDF5Output"),
    "HINGE_LOSS": (28, "HingeLoss"), "IM2COL": (11, "Im2col"), "IMAGE_DATA": (12, "ImageData"),
    "INFOGAIN_LOSS": (13, "InfogainLoss"), "INNER_PRODUCT": (14, "InnerProduct"),
    "LRN": (15, "LRN"), "MEMORY_DATA": (29, "MemoryData"),
    "MULTINOMIAL_LOGISTIC_LOSS": (16, "MultinomialLogisticLoss"), "MVN": (34, "MVN"),
    "POOLING": (17, "Pooling"), "POWER": (26, "Power"), "RELU": (18, "ReLU"),
    "SIGMOID": (19, "Sigmoid"), "SIGMOID_CROSS_ENTROPY_LOSS": (27, "SigmoidCrossEntropyLoss"),
    "SILENCE": (36, "Silence"), "SOFTMAX": (20, "Softmax"), "SOFTMAX_LOSS": (21, "SoftmaxWithLoss"),
    "SPLIT": (22, "Split"), "SLICE": (33, "Slice"), "TANH": (23, "TanH"),
    "WINDOW_DATA": (24, "WindowData"), "THRESHOLD": (31, "Threshold"),
}
V1_NAME_BY_NUMBER = {num: name for name, (num, _) in V1_TYPES.items()}
V2_TYPE_BY_NUMBER = dict(V1_TYPES.values())


# Every message of caffe.proto (BVLC/caffe 9b89154) with its fields; NAME:Type marks a message field.
_SCHEMA = """
AccuracyParameter: top_k axis ignore_label
ArgMaxParameter: out_max_val top_k axis
BatchNormParameter: use_global_stats moving_average_fraction eps
BiasParameter: axis num_axes filler:FillerParameter
BlobProto: shape:BlobShape data diff double_data double_diff num channels height width
BlobProtoVector: blobs:BlobProto
BlobShape: dim
ClipParameter: min max
ConcatParameter: axis concat_dim
ContrastiveLossParameter: margin legacy_version
ConvolutionParameter: num_output bias_term pad kernel_size stride dilation pad_h pad_w kernel_h
    kernel_w stride_h stride_w group weight_filler:FillerParameter bias_filler:FillerParameter
    engine axis force_nd_im2col
CropParameter: axis offset
DataParameter: source batch_size rand_skip backend scale mean_file crop_size mirror
    force_encoded_color prefetch
Datum: channels height width data label float_data encoded
DropoutParameter: dropout_ratio
DummyDataParameter: data_filler:FillerParameter shape:BlobShape num channels height width
ELUParameter: alpha
EltwiseParameter: operation coeff stable_prod_grad
EmbedParameter: num_output input_dim bias_term weight_filler:FillerParameter
    bias_filler:FillerParameter
ExpParameter: base scale shift
FillerParameter: type value min max mean std sparse variance_norm
FlattenParameter: axis end_axis
HDF5DataParameter: source batch_size shuffle
HDF5OutputParameter: file_name
HingeLossParameter: norm
ImageDataParameter: source batch_size rand_skip shuffle new_height new_width is_color scale
    mean_file crop_size mirror root_folder
InfogainLossParameter: source axis
InnerProductParameter: num_output bias_term weight_filler:FillerParameter
    bias_filler:FillerParameter axis transpose
InputParameter: shape:BlobShape
LRNParameter: local_size alpha beta norm_region k engine
LayerParameter: name type bottom top phase loss_weight param:ParamSpec blobs:BlobProto
    propagate_down include:NetStateRule exclude:NetStateRule transform_param:TransformationParameter
    loss_param:LossParameter accuracy_param:AccuracyParameter argmax_param:ArgMaxParameter
    batch_norm_param:BatchNormParameter bias_param:BiasParameter clip_param:ClipParameter
    concat_param:ConcatParameter contrastive_loss_param:ContrastiveLossParameter
    convolution_param:ConvolutionParameter crop_param:CropParameter data_param:DataParameter
    dropout_param:DropoutParameter dummy_data_param:DummyDataParameter
    eltwise_param:EltwiseParameter elu_param:ELUParameter embed_param:EmbedParameter
    exp_param:ExpParameter flatten_param:FlattenParameter hdf5_data_param:HDF5DataParameter
    hdf5_output_param:HDF5OutputParameter hinge_loss_param:HingeLossParameter
    image_data_param:ImageDataParameter infogain_loss_param:InfogainLossParameter
    inner_product_param:InnerProductParameter input_param:InputParameter log_param:LogParameter
    lrn_param:LRNParameter memory_data_param:MemoryDataParameter mvn_param:MVNParameter
    parameter_param:ParameterParameter pooling_param:PoolingParameter power_param:PowerParameter
    prelu_param:PReLUParameter python_param:PythonParameter recurrent_param:RecurrentParameter
    reduction_param:ReductionParameter relu_param:ReLUParameter reshape_param:ReshapeParameter
    scale_param:ScaleParameter sigmoid_param:SigmoidParameter softmax_param:SoftmaxParameter
    spp_param:SPPParameter slice_param:SliceParameter swish_param:SwishParameter
    tanh_param:TanHParameter threshold_param:ThresholdParameter tile_param:TileParameter
    window_data_param:WindowDataParameter
LogParameter: base scale shift
LossParameter: ignore_label normalization normalize
MVNParameter: normalize_variance across_channels eps
MemoryDataParameter: batch_size channels height width
NetParameter: name input input_shape:BlobShape input_dim force_backward state:NetState debug_info
    layer:LayerParameter layers:V1LayerParameter
NetState: phase level stage
NetStateRule: phase min_level max_level stage not_stage
PReLUParameter: filler:FillerParameter channel_shared
ParamSpec: name share_mode lr_mult decay_mult
ParameterParameter: shape:BlobShape
PoolingParameter: pool pad pad_h pad_w kernel_size kernel_h kernel_w stride stride_h stride_w engine
    global_pooling round_mode
PowerParameter: power scale shift
PythonParameter: module layer param_str share_in_parallel
ReLUParameter: negative_slope engine
RecurrentParameter: num_output weight_filler:FillerParameter bias_filler:FillerParameter debug_info
    expose_hidden
ReductionParameter: operation axis coeff
ReshapeParameter: shape:BlobShape axis num_axes
SPPParameter: pyramid_height pool engine
ScaleParameter: axis num_axes filler:FillerParameter bias_term bias_filler:FillerParameter
SigmoidParameter: engine
SliceParameter: axis slice_point slice_dim
SoftmaxParameter: engine axis
SolverParameter: net net_param:NetParameter train_net test_net train_net_param:NetParameter
    test_net_param:NetParameter train_state:NetState test_state:NetState test_iter test_interval
    test_compute_loss test_initialization base_lr display average_loss max_iter iter_size lr_policy
    gamma power momentum weight_decay regularization_type stepsize stepvalue clip_gradients snapshot
    snapshot_prefix snapshot_diff snapshot_format solver_mode device_id random_seed type delta
    momentum2 rms_decay debug_info snapshot_after_train solver_type layer_wise_reduce weights
SolverState: iter learned_net history:BlobProto current_step
SwishParameter: beta
TanHParameter: engine
ThresholdParameter: threshold
TileParameter: axis tiles
TransformationParameter: scale mirror crop_size mean_file mean_value force_color force_gray
V0LayerParameter: name type num_output biasterm weight_filler:FillerParameter
    bias_filler:FillerParameter pad kernelsize group stride pool dropout_ratio local_size alpha beta
    k source scale meanfile batchsize cropsize mirror blobs:BlobProto blobs_lr weight_decay
    rand_skip det_fg_threshold det_bg_threshold det_fg_fraction det_context_pad det_crop_mode
    new_num new_channels new_height new_width shuffle_images concat_dim
    hdf5_output_param:HDF5OutputParameter
V1LayerParameter: bottom top name include:NetStateRule exclude:NetStateRule type blobs:BlobProto
    param blob_share_mode blobs_lr weight_decay loss_weight accuracy_param:AccuracyParameter
    argmax_param:ArgMaxParameter concat_param:ConcatParameter
    contrastive_loss_param:ContrastiveLossParameter convolution_param:ConvolutionParameter
    data_param:DataParameter dropout_param:DropoutParameter dummy_data_param:DummyDataParameter
    eltwise_param:EltwiseParameter exp_param:ExpParameter hdf5_data_param:HDF5DataParameter
    hdf5_output_param:HDF5OutputParameter hinge_loss_param:HingeLossParameter
    image_data_param:ImageDataParameter infogain_loss_param:InfogainLossParameter
    inner_product_param:InnerProductParameter lrn_param:LRNParameter
    memory_data_param:MemoryDataParameter mvn_param:MVNParameter pooling_param:PoolingParameter
    power_param:PowerParameter relu_param:ReLUParameter sigmoid_param:SigmoidParameter
    softmax_param:SoftmaxParameter slice_param:SliceParameter tanh_param:TanHParameter
    threshold_param:ThresholdParameter window_data_param:WindowDataParameter
    transform_param:TransformationParameter loss_param:LossParameter layer:V0LayerParameter
WindowDataParameter: source scale mean_file batch_size crop_size mirror fg_threshold bg_threshold
    fg_fraction context_pad crop_mode cache_images root_folder
"""


def _schema(text):
    out, name = {}, None
    for line in text.strip().splitlines():
        if not line.startswith(" "):
            name, line = line.split(":", 1)
            out[name] = {}
        for field in line.split():
            key, _, sub = field.partition(":")
            out[name][key] = sub or None
    return out


FIELDS = _schema(_SCHEMA)


def check_fields(msg, message_type, unknown="error"):
    """Every field of `msg` (a parsed Message) and of its sub-messages must be a field of
    caffe.proto's `message_type`, as protobuf's text parser requires. unknown="error" raises a
    PrototxtError at the first unknown field; unknown="warn" (files from Caffe forks with extra
    fields) warns once per unknown field, naming it and its place, and lets it be ignored."""
    if unknown not in ("error", "warn"):
        raise ValueError(f"unknown must be 'error' or 'warn', got {unknown!r}")
    pending = [(msg, message_type)]
    while pending:
        m, kind = pending.pop()
        known, ignored = FIELDS[kind], set()
        for i, (key, value) in enumerate(m.fields):
            if key not in known:
                line, col = m.positions.get(i, (m.line, m.col))
                text = f"unknown field '{key}' in {kind}"
                if unknown == "error":
                    raise PrototxtError(text + " (a field of a Caffe fork? pass unknown_fields='warn' to "
                                        "ignore such fields)", m.file, line, col)
                warnings.warn(f"{m.file or '<string>'}:{line}:{col}: {text}, ignored", stacklevel=3)
                ignored.add(key)
            elif known[key] is not None and hasattr(value, "fields"):
                pending.append((value, known[key]))
        for key in ignored:
            m.remove(key)
    return msg
