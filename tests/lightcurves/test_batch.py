import numpy as np
import pandas as pd

from skyvar.lightcurves.batch import LightCurveBatch


def test_long_roundtrip_sorts_and_pads():
    df = pd.DataFrame({
        "source_id": [2, 1, 1, 2, 1],
        "band": ["g", "r", "r", "g", "r"],
        "time": [5.0, 3.0, 1.0, 4.0, 2.0],
        "mag": [20.5, 18.3, 18.1, 20.4, 18.2],
        "mag_err": [0.1, 0.01, 0.01, 0.1, 0.01],
    })
    b = LightCurveBatch.from_long(df)
    assert len(b) == 2 and b.mag.shape == (2, 3)
    assert list(b.source_id) == [1, 2] and list(b.band) == ["r", "g"]
    np.testing.assert_array_equal(b.n_points, [3, 2])
    np.testing.assert_allclose(b.mag[0], [18.1, 18.2, 18.3])
    assert not b.mask[1, 2] and np.isnan(b.mag[1, 2])
    back = b.to_long()
    assert len(back) == 5 and back.groupby("source_id").time.is_monotonic_increasing.all()
