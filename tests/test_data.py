"""The data path a data-parallel worker reads: its own share of every batch, exactly as the whole batch holds it; and
the ImageFolder trees it refuses, in one line."""
import pytest
import torch

import jcw.data

from conftest import write_imagefolder


def test_each_shard_is_its_slice_of_the_augmented_batch(data):
    whole = list(data.batches("train", 64, shuffle=True, augment=True, seed=7, limit=256))
    shards = [list(data.batches("train", 64, shuffle=True, augment=True, seed=7, limit=256, shard=(k, 4)))
              for k in range(4)]
    assert len(whole) == 4 and all(len(s) == 4 for s in shards)
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([s[i].images for s in shards]), batch.images)
        assert torch.equal(torch.cat([s[i].labels for s in shards]), batch.labels)
    assert not torch.equal(shards[0][0].images, shards[1][0].images)


def test_unaugmented_passes_resized_once_are_the_batches_resized_each_time(data, monkeypatch):
    """The default's 28 px images are served at 56 px: scoring passes reuse their resized images, bit for bit."""
    assert data.input_size == 56 and data.splits["val"][0].shape[-1] == 28
    monkeypatch.setattr(data, "_resized", {})  # the shared fixture's own passes stay kept for the other tests
    passes = [("val", dict(limit=300)), ("train", dict(shuffle=True, seed=1234, limit=250)),
              ("test", dict(limit=200, shard=(1, 2)))]
    kept = [list(data.batches(split, 100, **kw)) for split, kw in passes]
    assert len(data._resized) == 2  # a share (a process's part of the test split) resizes its images, keeps none
    whole = list(data.batches("test", 100, limit=200))
    assert all(torch.equal(share.images, batch.images[50:]) for share, batch in zip(kept[2], whole))
    monkeypatch.setattr(jcw.data, "RESIZED_CACHE_BYTES", 0)
    monkeypatch.setattr(data, "_resized", {})
    for (split, kw), batches in zip(passes, kept):
        fresh = list(data.batches(split, 100, **kw))
        assert len(fresh) == len(batches) and all(torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
                                                  for a, b in zip(fresh, batches))
    assert not data._resized  # over the cap: nothing kept


def test_one_stored_channel_served_as_three_is_three_stored_channels():
    """Grey-as-RGB keeps one channel and copies it per batch, after augmenting and resizing: the batches must be
    those of the three channels stored."""
    from jcw.data import InMemoryData

    gen = torch.Generator().manual_seed(0)
    grey = {k: torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=gen) for k, n in (("x", 300),
                                                                                               ("t", 60))}
    labels = {k: torch.randint(0, 10, (n,), generator=gen) for k, n in (("x", 300), ("t", 60))}
    three = InMemoryData("t", grey["x"].expand(-1, 3, -1, -1).contiguous(), labels["x"],
                         grey["t"].expand(-1, 3, -1, -1).contiguous(), labels["t"], 10, val_size=50)
    one = InMemoryData("t", grey["x"], labels["x"], grey["t"], labels["t"], 10, val_size=50, channels=3)
    assert one.in_channels == 3 and one.splits["train"][0].shape[1] == 1
    assert torch.equal(one.mean, three.mean) and torch.equal(one.std, three.std)
    for data in (three, one):
        data.resize(24)
    for split, kw in (("train", dict(shuffle=True, augment=True, seed=3)), ("train", dict(shuffle=True, seed=9)),
                      ("val", {}), ("test", dict(shard=(1, 2))), ("train", dict(augment=True, shard=(0, 3)))):
        a, b = list(three.batches(split, 32, **kw)), list(one.batches(split, 32, **kw))
        assert len(a) == len(b) > 0 and all(torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
                                            for x, y in zip(a, b)), (split, kw)
        assert a[0].images.shape[1:] == (3, 24, 24)


def test_imagefolder_shards_decode_their_share_on_workers_that_outlive_the_epoch(tmp_path):
    from jcw.data import ImageFolderData, loader_workers

    data = ImageFolderData(write_imagefolder(tmp_path / "d", classes=2, per_class=20), input_size=32, val_size=4,
                           workers=2)
    assert 1 <= loader_workers() <= 8
    whole = list(data.batches("train", 8, shuffle=True, seed=3))  # eval transforms: deterministic
    halves = [list(data.batches("train", 8, shuffle=True, seed=3, shard=(k, 2))) for k in range(2)]
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([h[i].labels for h in halves]), batch.labels)
        assert torch.allclose(torch.cat([h[i].images for h in halves]), batch.images)
    (loader, _), = [v for k, v in data.loaders.items() if k[2] == 8]
    first = loader._iterator._workers
    again = list(data.batches("train", 8, shuffle=True, seed=4))  # the next epoch: the same worker processes
    assert loader._iterator._workers is first and all(w.is_alive() for w in first)
    labels = [sorted(torch.cat([b.labels for b in batches]).tolist()) for batches in (again, whole)]
    assert labels[0] == labels[1]


def test_imagefolder_trees_a_user_gets_wrong_are_one_clear_line(tmp_path):
    """A val/ without classes, one class, val/ classes that are not train/'s (labels would silently disagree), and a
    file that is no image, read in this process and in a loader process alike."""
    import shutil

    from jcw.data import ImageFolderData
    from jcw.errors import JcwError

    empty = write_imagefolder(tmp_path / "empty")
    for folder in (empty / "val").iterdir():
        shutil.rmtree(folder)
    with pytest.raises(JcwError, match="Couldn't find any class folder in .*val; give train/ and val/"):
        ImageFolderData(empty, input_size=32, val_size=4)
    other = write_imagefolder(tmp_path / "other")
    (other / "val" / "class1").rename(other / "val" / "class7")
    with pytest.raises(JcwError, match=r"the same class folders.*train/: class0, class1; val/: class0, class7"):
        ImageFolderData(other, input_size=32, val_size=4)
    shutil.rmtree(other / "train" / "class1")
    shutil.rmtree(other / "val" / "class7")
    with pytest.raises(JcwError, match="two or more"):
        ImageFolderData(other, input_size=32, val_size=4)
    broken = write_imagefolder(tmp_path / "broken", per_class=20)
    (broken / "train" / "class1" / "5.jpg").write_bytes(b"not a jpeg")
    for workers in (0, 2):
        data = ImageFolderData(broken, input_size=32, val_size=4, workers=workers)
        with pytest.raises(JcwError) as raised:
            for split in ("train", "val"):  # wherever the split put it
                for _ in data.batches(split, 8):
                    pass
        assert str(raised.value) == (f"cannot read image {broken}/train/class1/5.jpg (not an image PIL can read); "
                                     "remove or replace it")
        # neither the error (kept here, not chained to the loader process's) nor the data holds the failed loader,
        # whose processes would live on with it
        assert not isinstance(raised.value.__context__, JcwError) and not data.loaders


def test_channel_stats_from_histograms_are_the_float_computation():
    images = torch.randint(0, 256, (300, 3, 6, 6), dtype=torch.uint8)
    images[:, 1] //= 4  # channels that differ
    mean, sd = jcw.data.channel_stats(images)
    as_float = images.float() / 255
    assert torch.allclose(mean, as_float.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(sd, as_float.std(dim=(0, 2, 3)), atol=1e-6)
    assert mean[1] < mean[0] / 2
