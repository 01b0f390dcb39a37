"""The release's solver.prototxt files: one template, the per-net settings that differ."""
from ..caffe.prototxt import Message

# base_lr for the unnormalized softmax (losses summed over pixels), per net.
BASE_LR = {
    "voc-fcn32s": 1e-10, "voc-fcn16s": 1e-12, "voc-fcn8s": 1e-14, "voc-fcn8s-atonce": 1e-10,
    "voc-fcn-alexnet": 1e-4,
    "pascalcontext-fcn32s": 1e-10, "pascalcontext-fcn16s": 1e-12, "pascalcontext-fcn8s": 1e-14,
    "nyud-fcn32s-color": 1e-10, "nyud-fcn32s-hha": 1e-10, "nyud-fcn32s-color-d": 1e-10,
    "nyud-fcn32s-color-hha": 1e-12,
    "siftflow-fcn32s": 1e-10, "siftflow-fcn16s": 1e-12, "siftflow-fcn8s": 1e-12,
}
# dataset -> (test_iter = size of the test split, snapshot interval or None)
TEST_SPLIT_AND_SNAPSHOT = {"voc": (736, 4000), "pascalcontext": (5105, 4000), "nyud": (654, 2000),
            "siftflow": (200, None)}
MAX_ITER = {"voc-fcn8s-atonce": 300000}


def solver(name, train_file, test_file):
    """SolverParameter of a net, fields in the release's order."""
    test_iter, snapshot = TEST_SPLIT_AND_SNAPSHOT[name.split("-")[0]]
    alexnet = name == "voc-fcn-alexnet"  # normalized softmax: standard lr, momentum, iter_size
    max_iter = MAX_ITER.get(name, 100000 if name.startswith("voc") else 300000)
    fields = dict(train_net=train_file, test_net=test_file, test_iter=test_iter,
                  test_interval=999999999, display=20, average_loss=20, lr_policy="fixed",
                  base_lr=BASE_LR[name], momentum=0.9 if alexnet else 0.99,
                  iter_size=20 if alexnet else 1, max_iter=max_iter, weight_decay=0.0005)
    if snapshot:
        fields.update(snapshot=snapshot, snapshot_prefix="snapshot/train")
    fields.update(test_initialization=False)
    return Message.from_py(fields)


def vgg_solver(train_file, test_file):
    """The VGG16 ILSVRC recipe (Simonyan & Zisserman 2015): SGD with momentum 0.9, weight decay
    5e-4, lr 0.01 divided by 10 when accuracy stalls (a step policy here), normalised loss."""
    return Message.from_py(dict(train_net=train_file, test_net=test_file, test_iter=50, test_interval=1000,
                                display=20, average_loss=20, lr_policy="step", base_lr=0.01, gamma=0.1,
                                stepsize=100000, momentum=0.9, max_iter=370000, weight_decay=0.0005,
                                snapshot=10000, snapshot_prefix="snapshot/vgg16", test_initialization=False))
