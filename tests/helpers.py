"""Helpers shared by several test modules (tests/ is on sys.path under pytest's default import mode)."""
import contextlib
import fcntl
import os


@contextlib.contextmanager
def once_per_session(tmp_path_factory, name: str):
    """(folder, ready): a folder shared by every xdist worker of this test session, held under a file lock, so
    that the first worker builds the expensive exports and the others reuse them (module fixtures would
    otherwise run once per worker). ready: an earlier worker finished building."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent   # the session's folder, above the per-worker ones
    folder = base / name
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder, (folder / ".done").exists()
        (folder / ".done").touch()


def write_person_formats(root, identities: int = 6, images: int = 4, people: tuple = (1, 2), seed: int = 9):
    """Tiny Market-1501 / LIP / MPII folders under ``root`` written from SynthHumans with the format writers."""
    import numpy as np

    from hcq_ros.data.formats import LipWriter, MarketWriter, MpiiWriter
    from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_image

    pool = IdentityPool(identities, seed=seed)
    market = MarketWriter(root / "market")
    lip, mpii = LipWriter(root / "lip", "train"), MpiiWriter(root / "mpii")
    cfg = SceneConfig(width=96, height=96, min_people=people[0], max_people=people[1], min_person_height=40)
    for i in range(images):
        sample = generate_image(np.random.default_rng([seed, i]), cfg, image_id=i + 1, pool=pool)
        for k, p in enumerate(sample.persons):
            x0, y0, x1, y1 = np.round(p.box).astype(int)
            crop = np.ascontiguousarray(sample.image[max(0, y0):y1, max(0, x0):x1])
            if crop.shape[0] >= 4 and crop.shape[1] >= 4:
                market.add(crop, p.identity, 1 + i % 2, i + 1, k, "train")
                market.set_attributes(p.identity, p.attributes)
        if sample.persons:
            lip.add(sample)
            mpii.add(sample, f"{i + 1:06d}.jpg")
    market.close(), lip.close(), mpii.close()
    return root


def tiny_hcq_train_config(**train) -> dict:
    """A few-step HCQNet training config (64 px synth, tiny model); ``train`` overrides the train section."""
    return {
        "model": {"kind": "hcq", "preset": "hcqnet", "profile": "small",
                  "overrides": {"d_model": 32, "mask_dim": 16, "num_queries": 6, "enc_layers": 1, "dec_layers": 2,
                                "n_heads": 2, "ffn_dim": 32, "mask_points": 256}},
        "data": {"train": "synth", "image_size": [64, 64], "source_size": [96, 96], "batch_size": 2, "workers": 0,
                 "scene": {"max_people": 3, "min_person_height": 24}, "val": "synth", "val_images": 3,
                 "val_size": [64, 64]},
        "train": {"iterations": 4, "lr": 1e-3, "warmup": 1, "checkpoint_every": 2, "eval_every": 4, "log_every": 1,
                  "bf16": True, "threads": 1, **train},
    }


class GroundTruthPerceptor:
    """Stand-in for Perceptor that returns the ground truth of the frame it is given (found by sequence name =
    frame_id and stamp): a perfect detector + tracker."""

    def __init__(self, data_dir, fps: float = 25.0):
        from hcq_ros.evaluation.coco_eval import load_coco_gt
        from hcq_ros.pipeline import PerceptorConfig

        self.coco = load_coco_gt(data_dir / "annotations" / "person_keypoints.json")
        self.by_frame = {(i["sequence"], i["frame"]): i["id"] for i in self.coco.imgs.values()}
        self.fps = fps
        self.config = PerceptorConfig()
        self.reasons = {"detector": "ground truth"}

    def reset(self) -> None:
        pass

    def detect(self, image, stamp_ns=0, frame_id=""):   # the Perceptor's two halves: detect, then describe
        return (image, stamp_ns, frame_id)

    def describe(self, detections):
        return self.process(*detections)

    def process(self, image, stamp_ns: int, frame_id: str):
        import numpy as np

        from hcq_ros.result import Person, PersonFrame, box_grid

        frame = int(round(stamp_ns * self.fps / 1e9)) + 1
        image_id = self.by_frame[(frame_id, frame)]
        persons = []
        for ann in self.coco.imgToAnns[image_id]:
            x, y, w, h = ann["bbox"]
            box = np.array([x, y, x + w, y + h], np.float32)
            gx, gy, gw, gh = box_grid(box)
            full = np.pad(self.coco.annToMask(ann).astype(bool), ((0, gh), (0, gw)))
            kps = np.asarray(ann["keypoints"], np.float32).reshape(17, 3)
            labelled = kps[:, 2] > 0
            kps[:, 2] = labelled
            if not labelled.any():  # COCOeval matches such people by box: joints at the box centre
                kps[:] = (x + w / 2, y + h / 2, 0.0)
            persons.append(Person(track_id=ann["track_id"], score=1.0, box=box, keypoints=kps,
                                  mask=full[gy:gy + gh, gx:gx + gw]))
        return PersonFrame(stamp_ns, frame_id, (image.shape[1], image.shape[0]), persons)
