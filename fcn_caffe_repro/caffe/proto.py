"""Facts of caffe.proto that more than one reader needs: the V1 layer type enum and its V2 names."""

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
