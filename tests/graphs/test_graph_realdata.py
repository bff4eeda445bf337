from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from kappaflow.graphs.build import crystal_to_graph
from kappaflow.layout import data_root
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.elements import SUPPORTED_Z

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def d1() -> pd.DataFrame:
    path = data_root() / "ltc" / "paraisite_dataset1.csv.gz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    return pd.read_csv(path)


@pytest.mark.filterwarnings("ignore:Issues encountered while parsing CIF")
def test_paraisite_d1_graphs_match_pymatgen(d1: pd.DataFrame) -> None:
    sub = d1.iloc[::4]  # every 4th row keeps the test fast; rocksalt, zincblende and wurtzite
    for mid, cif in zip(sub["id"], sub["cif"], strict=True):
        s = Structure.from_str(cif, fmt="cif")
        assert all(z in SUPPORTED_Z for z in s.atomic_numbers)
        g = crystal_to_graph(CrystalArrays.from_structure(s), 8.0, 12, material_id=mid)
        assert np.all(np.bincount(g.edge_index[1].numpy(), minlength=len(s)) == 12), mid
        # the 12 kept distances are the 12 smallest of pymatgen's full neighbour list
        centers, _, _, dists = s.get_neighbor_list(8.0)
        for i in range(len(s)):
            ref = np.sort(dists[centers == i])[:12]
            got = g.edge_dist[g.edge_index[1] == i].numpy()
            np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=mid)
