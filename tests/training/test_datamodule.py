import kappa_testkit as kt
import torch

from kappaflow.training.datamodule import EpochSeededSampler, GraphDataModule, dataset_targets


def test_sampler_depends_only_on_seed_and_epoch() -> None:
    s = EpochSeededSampler(50, seed=3)
    s.set_epoch(2)
    a = list(s)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    s2 = EpochSeededSampler(50, seed=3)
    s2.set_epoch(2)
    assert list(s2) == a and sorted(a) == list(range(50))
    s2.set_epoch(3)
    assert list(s2) != a
    assert list(EpochSeededSampler(50, seed=4)) != list(EpochSeededSampler(50, seed=3))
    assert list(EpochSeededSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_loaders_cover_splits_in_fixed_eval_order() -> None:
    graphs = kt.tiny_graphs(20, multi=True)
    tr, va, te = kt.split(20)
    dm = GraphDataModule(graphs, tr, va, te, batch_size=4, seed=1)
    seen = [i for b in dm.train_dataloader() for i in b.material_id]
    assert sorted(seen) == sorted(f"m-{i}" for i in tr)
    val_ids = [i for b in dm.val_dataloader() for i in b.material_id]
    assert val_ids == [f"m-{i}" for i in va]
    batch = next(iter(dm.test_dataloader()))
    assert batch.y.shape == (4, 2)
    y = dm.train_targets()
    assert y.shape == (len(tr), 2)
    assert torch.equal(y.nan_to_num(-1), dataset_targets(graphs, tr).nan_to_num(-1))


def test_from_cfg_reads_trainer_keys() -> None:
    graphs = kt.tiny_graphs(10)
    cfg = {"batch_size": 3, "eval_batch_size": 5, "seed": 11, "accelerator": "cpu"}
    dm = GraphDataModule.from_cfg(graphs, [0, 1, 2, 3], [4, 5], [6, 7], cfg)
    assert (dm.batch_size, dm.eval_batch_size, dm.seed, dm.pin_memory) == (3, 5, 11, False)
    assert len(dm.val_dataloader()) == 1 and len(dm.train_dataloader()) == 2
