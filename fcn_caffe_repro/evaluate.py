"""Score a net over a dataset image by image at native size, as the release's score.py does.

Images load in a worker process while the net runs, metrics accumulate in a confusion histogram per
task (SIFT Flow has two), and an interrupted run resumes from a state file. The tools eval.py and
infer.py are thin over this module.
"""
import argparse
import ast
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data, distributed, metrics, nets, paper
from .atomic import write_json
from .data import release
from .data.common import item_loader
from .errors import NetError

@dataclass
class Task:
    """One scored output: the net's score blob and the dataset's label top it is compared with."""
    score: str
    label: str
    exclude: tuple = ()  # classes left out of the paper-convention means
    accumulator: metrics.Accumulator = field(default=None, repr=False)


def net_tasks(net_name):
    """[(score blob, label top)] from the loss layers of the net's val/test definition (as solve.py pairs them)."""
    return [(l.bottom[0], l.bottom[1]) for l in nets.net_spec(net_name, "val").layers
            if l.type == "SoftmaxWithLoss" and len(l.bottom) == 2]


def dataset_option(text):
    """("key", value) of a command line's KEY=VALUE dataset option; the value read as a Python
    literal (int, float, tuple, ...) when it is one, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got '{text}'")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def make_dataset(name, root=None, split=None, net_name=None, **options):
    """A dataset by name; NYUD takes its tops from the net's data layer, as the release's prototxt does."""
    if name not in data.DATASETS:
        raise ValueError(f"unknown dataset '{name}'; pick from {', '.join(data.DATASETS)}")
    cls = data.DATASETS[name]
    if name == "synthetic":
        return cls(**options)
    if root is None:
        raise ValueError(f"dataset '{name}' needs a root directory")
    kwargs = dict(options)
    if split is not None:
        kwargs["split"] = split
    if name == "nyud" and net_name is not None and "tops" not in kwargs:
        _, params = nets.data_layer_params(net_name)
        kwargs["tops"] = tuple(params.get("tops", ("color", "label")))
    return cls(root, **kwargs)


def default_io(net, dataset, net_name=None):
    """(feeds {net input: dataset top}, tasks [Task]) pairing a net with a dataset.

    Inputs pair positionally (the release's data layers list image tops in the net's order); score
    blobs pair with labels through the net's loss layers, or one to one when the net has no registry name.
    """
    net_inputs = list(getattr(net, "inputs", None) or ["data"])
    data_inputs = list(dataset.input_tops)
    if len(net_inputs) != len(data_inputs):
        raise NetError(f"the net takes inputs {net_inputs}, the dataset gives {data_inputs}")
    feeds = dict(zip(net_inputs, data_inputs))
    labels = [t for t in dataset.tops if t in dataset.tasks]
    pairs = net_tasks(net_name) if net_name else []
    if not pairs:
        outputs = list(getattr(net, "outputs", None) or ["score"])
        if len(outputs) != len(labels):
            raise NetError(f"cannot pair the net's outputs {outputs} with the dataset's labels {labels}")
        pairs = list(zip(outputs, labels))
    exclude = getattr(dataset, "exclude", ())
    tasks = []
    for score, label in pairs:
        if label not in dataset.tasks:
            raise NetError(f"the net scores '{score}' against label '{label}', which the dataset lacks "
                           f"(it has {labels})")
        tasks.append(Task(score, label, tuple(exclude) if label == labels[0] else ()))
    return feeds, tasks


def class_map(scores):
    """The argmax class map (H×W) of C×H×W scores, as score.py's numpy argmax: the first of equal
    maxima, NaN above all. max(0).indices: argmax(0) over the leading dimension of a contiguous
    tensor runs ~6x slower on CPU (6×128×128: 3.5 against 0.5 ms)."""
    return scores.max(0).indices


def predict(net, feeds, score="score"):
    """Argmax class map (H×W, on the net's device) of one image; feeds: {input: C×H×W tensor}."""
    out = net(**{k: v.unsqueeze(0) for k, v in feeds.items()})
    return class_map(out[score][0])


def input_defaults(net_name):
    """(mean, class names, score blob) for running a net on plain photos: its dataset's mean and classes.

    Only nets whose one input is a colour image qualify (not HHA, depth or two-stream nets).
    """
    if net_name not in nets.REGISTRY:
        raise NetError(f"unknown net {net_name!r}; valid nets: {', '.join(nets.REGISTRY)}")
    tops, params = nets.data_layer_params(net_name)
    images = [t for t in params.get("tops", tops) if t not in release.LABEL_TOPS]
    if images not in (["data"], ["color"]):
        raise NetError(f"{net_name} takes {images}, not one colour image: it cannot run on plain photos")
    layer = release.data_layer(net_name)
    return layer.mean, list(layer.classes), layer.score


def _finite(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class Evaluator:
    """The one scorer: runs ``net`` over ``dataset`` (its first ``limit`` images), image by image, and
    returns the results dict that eval.py writes as JSON. Under torchrun each process scores every
    world-th image and the histograms are summed; resuming from a state file is single-process."""

    def __init__(self, net, dataset, feeds=None, tasks=None, net_name=None, device="cpu", save_dir=None,
                 state_file=None, workers=1, settings=None, checkpoint_s=30.0, progress=True, limit=None):
        if feeds is None or tasks is None:
            f, t = default_io(net, dataset, net_name)
            feeds, tasks = feeds or f, tasks or t
        self.net, self.dataset, self.feeds, self.tasks = net, dataset, feeds, tasks
        self.device = torch.device(device)
        self.save_dir = Path(save_dir) if save_dir else None
        self.state_file = Path(state_file) if state_file else None
        self.workers, self.checkpoint_s, self.progress = workers, checkpoint_s, progress
        self.settings = dict(settings or {})
        self.done, self.forward_s, self.total_s, self.per_image_s = 0, 0.0, 0.0, []
        self.count = len(dataset) if limit is None else min(int(limit), len(dataset))
        self.rank, self.world = distributed.rank_and_world()
        if self.world > 1 and (state_file is not None or save_dir is not None):
            raise ValueError("resuming and saving predictions are single-process: run without torchrun")

    # --- state for --resume ---------------------------------------------------------------------
    def state(self):
        return {"settings": self.settings, "done": self.done, "forward_s": self.forward_s, "total_s": self.total_s,
                "per_image_s": self.per_image_s,
                "tasks": {t.label: t.accumulator.state_dict() for t in self.tasks if t.accumulator}}

    def resume(self):
        """Continue from the state file if it exists; its settings must equal this run's."""
        if self.state_file is None or not self.state_file.is_file():
            return False
        state = json.loads(self.state_file.read_text())
        if state["settings"] != self.settings:
            diff = {k for k in set(state["settings"]) | set(self.settings)
                    if state["settings"].get(k) != self.settings.get(k)}
            raise ValueError(f"{self.state_file}: saved run differs in {sorted(diff)}; remove it or drop --resume")
        self.done, self.forward_s, self.total_s = state["done"], state["forward_s"], state["total_s"]
        self.per_image_s = state["per_image_s"]
        for t in self.tasks:
            saved = state["tasks"].get(t.label)
            if saved is not None:
                t.accumulator = metrics.Accumulator(saved["num_classes"]).load_state_dict(saved)
        return True

    def checkpoint(self):
        if self.state_file is not None:
            write_json(self.state_file, self.state())

    # --- the loop -------------------------------------------------------------------------------
    def _loader(self):
        mine = range(self.done + self.rank, self.count, self.world)
        return item_loader(torch.utils.data.Subset(self.dataset, mine), self.workers)

    def run(self):
        from tqdm import tqdm

        tops = list(self.dataset.tops)
        self.net.eval()
        last_save = time.perf_counter()
        bar = tqdm(total=self.count, initial=self.done, disable=not self.progress, unit="img",
                   desc="eval", dynamic_ncols=True)
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                for sample in self._loader():
                    feeds = {k: sample[tops.index(v)].to(self.device) for k, v in self.feeds.items()}
                    t0 = time.perf_counter()
                    out = self.net(**{k: v.unsqueeze(0) for k, v in feeds.items()})
                    preds = {t.score: class_map(out[t.score][0]) for t in self.tasks}
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.forward_s += time.perf_counter() - t0
                    for t in self.tasks:
                        if t.accumulator is None:
                            t.accumulator = metrics.Accumulator(out[t.score].shape[1])
                        label = sample[tops.index(t.label)]
                        if label is not None:
                            t.accumulator.update(label.to(self.device), preds[t.score])
                    if self.save_dir is not None:
                        self._save(preds)
                    now = time.perf_counter()
                    self.per_image_s.append(round(now - start, 6))
                    self.total_s += now - start
                    start = now
                    self.done += 1
                    bar.update(1)
                    if self.progress and self.tasks[0].accumulator is not None:
                        bar.set_postfix(mean_iu=f"{self.tasks[0].accumulator.scores()['mean_iu']:.3f}",
                                        refresh=False)
                    if now - last_save > self.checkpoint_s:
                        self.checkpoint()
                        last_save = now
        except KeyboardInterrupt:
            self.checkpoint()
            raise
        finally:
            bar.close()
        self.checkpoint()
        return self.results()

    def _save(self, preds):
        from .visualize import save_label_png

        name = self.dataset.ids[self.done]
        for t in self.tasks:
            sub = self.save_dir / t.label if len(self.tasks) > 1 else self.save_dir
            save_label_png(sub / f"{name}.png", preds[t.score])

    # --- results --------------------------------------------------------------------------------
    def _class_count(self, task):
        """Classes of a task no image was scored for (a process with no share): the net's score
        channels when it declares them, so every process sums histograms of one shape."""
        shapes = getattr(self.net, "blob_shapes", {})
        return shapes[task.score][1] if task.score in shapes else len(self.dataset.tasks[task.label])

    def results(self):
        tasks = {}
        for t in self.tasks:
            acc = t.accumulator or metrics.Accumulator(self._class_count(t))
            if self.world > 1:  # every process scored its share: sum the histograms
                acc.hist = distributed.all_reduce_sum(torch.from_numpy(acc.hist)).numpy()
            names = list(self.dataset.tasks[t.label])[:acc.n]
            names += [f"class{k}" for k in range(len(names), acc.n)]
            s = acc.scores()
            entry = {"score_blob": t.score, "classes": names,
                     "metrics": {k: _finite(s[k]) for k in metrics.METRICS},
                     "per_class_iu": {n: _finite(float(v)) for n, v in zip(names, s["iu"])},
                     "per_class_acc": {n: _finite(float(v)) for n, v in zip(names, s["acc"])},
                     "confusion": acc.hist.tolist()}
            exclude = [k for k in t.exclude if k < acc.n]
            if exclude:
                ex = acc.scores(exclude=exclude)
                entry["excluded"] = [names[k] for k in exclude]
                entry["metrics_excluding"] = {k: _finite(ex[k]) for k in metrics.METRICS}
            tasks[t.label] = entry
        n = max(self.done, 1)
        return {"settings": self.settings, "num_images": self.done, "tasks": tasks,
                "time": {"total_s": self.total_s, "per_image_s": self.total_s / n,
                         "forward_per_image_s": self.forward_s / n,
                         "overhead_ratio": self.total_s / self.forward_s if self.forward_s else None,
                         "images_s": self.per_image_s}}


def evaluate(net, dataset, **kwargs):
    """Results dict of ``net`` on ``dataset`` (see Evaluator); resumes when a state_file exists and resume=True."""
    resume = kwargs.pop("resume", False)
    ev = Evaluator(net, dataset, **kwargs)
    if resume:
        ev.resume()
    return ev.run()


def _pct(v):
    return "–" if v is None else f"{100 * v:.2f}"


def markdown_table(results, net_name, dataset_name, split):
    """Our metrics beside every published row for the same net and dataset (percent)."""
    key = release.PAPER_KEYS.get(dataset_name, dataset_name)
    head = ["net", "task", "split", "pixel acc.", "mean acc.", "mean IU", "f.w. IU", "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, entry in results["tasks"].items():
        m = entry.get("metrics_excluding", entry["metrics"])
        note = f"this run ({results['num_images']} images)"
        if "excluded" in entry:
            note += f"; means without {', '.join(entry['excluded'])}"
        lines.append(f"| **{net_name}** (ours) | {label} | {split} | "
                     + " | ".join(_pct(m[k]) for k in metrics.METRICS) + f" | {note} |")
    for rec in paper.find(net=net_name, dataset=key):
        cells = [f"{rec['metrics'][k]:.2f}" if k in rec["metrics"] else "–" for k in metrics.METRICS]
        extra = f"; geometric acc. {rec['metrics']['geo_acc']}" if "geo_acc" in rec["metrics"] else ""
        lines.append(f"| {rec['row']} (published) | | {rec['split']} | " + " | ".join(cells)
                     + f" | {rec['source']}, {rec['table']}{extra} |")
    return "\n".join(lines)
