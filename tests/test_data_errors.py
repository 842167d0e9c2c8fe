"""Bad data fails at load time with a message naming the file, column, row or config key."""
import numpy as np
import pytest

from bnspike import config
from bnspike.data import DataError, load_data, register

GOOD = "a,b,y\n1,2,3\n2,1,5\n3,5,4\n4,4,8\n"


def load(*overrides, **data):
    return load_data(config.resolve({"data": data}, list(overrides)))


def csv_error(tmp_path, text, *overrides, name="d.csv", **data) -> str:
    path = tmp_path / name
    path.write_text(text)
    spec = {"source": "csv", "path": str(path), "target": "y", **data}
    with pytest.raises(DataError) as e:
        load(*overrides, **spec)
    return str(e.value)


def npy_error(tmp_path, X, y, *overrides) -> str:
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(DataError) as e:
        load(*overrides, source="npy", x_path=str(tmp_path / "X.npy"), y_path=str(tmp_path / "y.npy"))
    return str(e.value)


def assert_names(message: str, *parts: str):
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"


def test_good_csv_loads(tmp_path):  # the baseline every case below breaks in one way
    (tmp_path / "d.csv").write_text(GOOD)
    assert load(source="csv", path=str(tmp_path / "d.csv"), target="y").X.shape == (4, 2)


@pytest.mark.parametrize("source, key", [("csv", "path"), ("npz", "path"), ("npy", "x_path")])
def test_missing_file(tmp_path, source, key):
    with pytest.raises(DataError) as e:
        load(source=source, **{key: str(tmp_path / "nope.dat")},
             **({"y_path": str(tmp_path / "y.npy")} if source == "npy" else {}))
    assert_names(str(e.value), f"data.{key}", "file not found", "nope.dat")


@pytest.mark.parametrize("text, what", [("", "0 bytes"), ("\n\n", "only blank lines")])
def test_empty_csv(tmp_path, text, what):
    assert_names(csv_error(tmp_path, text), "d.csv", "empty", what)


def test_empty_npy_file(tmp_path):
    (tmp_path / "X.npy").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load(source="npy", x_path=str(tmp_path / "X.npy"), y_path=str(tmp_path / "X.npy"))
    assert_names(str(e.value), "data.x_path", "empty", "X.npy")


def test_nan_and_inf_in_csv_counted_with_first_line_and_column(tmp_path):
    msg = csv_error(tmp_path, "a,b,y\n1,2,3\n2,nan,5\n3,5,4\n4,-inf,8\n")
    assert_names(msg, "d.csv", "2 NaN or infinite", "first at line 3", "column 'b'")


def test_nan_in_npy_features_and_inf_in_target(tmp_path):
    X = np.ones((6, 3)) * np.arange(6)[:, None]
    X[4, 2] = np.nan
    assert_names(npy_error(tmp_path, X, np.arange(6.0)), "X.npy", "1 NaN or infinite", "row 4, column 2")
    y = np.arange(6.0)
    y[[1, 5]] = np.inf
    assert_names(npy_error(tmp_path, np.arange(12.0).reshape(6, 2) ** 2, y), "y.npy",
                 "2 NaN or infinite", "target", "row 1")


@pytest.mark.parametrize("cell, what", [("abc", "'abc' is not a number"), ("", "is empty"),
                                        ("1,5", "is not a number"), ("1_000", "'1_000' is not a number")])
def test_non_numeric_cell(tmp_path, cell, what):
    text = GOOD.replace("2,1,5", f'2,"{cell}",5')
    assert_names(csv_error(tmp_path, text), "d.csv line 3", "column 'b'", what)


def test_text_in_regression_target(tmp_path):
    assert_names(csv_error(tmp_path, GOOD.replace("3,5,4", "3,5,high")), "line 4", "column 'y'", "'high'")


def test_header_read_as_data(tmp_path):
    assert_names(csv_error(tmp_path, GOOD, header="absent", target=2),
                 "d.csv line 1", "looks like a header", "'a'", "data.header: present")


def test_data_read_as_header(tmp_path):
    text = "".join(GOOD.splitlines(keepends=True)[1:])
    assert_names(csv_error(tmp_path, text, header="present", target=2),
                 "d.csv line 1", "looks like data", "data.header: absent")


def test_ambiguous_first_line_under_auto(tmp_path):
    assert_names(csv_error(tmp_path, GOOD.replace("a,b,y", "a,7,y"), target=2),
                 "d.csv line 1", "cannot tell whether it is a header", "data.header")


def test_one_column_csv(tmp_path):
    assert_names(csv_error(tmp_path, "a;b;y\n1;2;3\n2;1;5\n"), "d.csv", "only 1 column", "data.delimiter")


def test_one_row_csv(tmp_path):
    assert_names(csv_error(tmp_path, "1,2,3\n", target=2), "d.csv", "only 1 line")
    assert_names(csv_error(tmp_path, "a,b,y\n1,2,3\n"), "d.csv", "only 1 data line")


def test_one_dimensional_features_are_not_guessed(tmp_path):
    assert_names(npy_error(tmp_path, np.arange(5.0), np.arange(5.0)), "X.npy", "1-D", "reshape(-1, 1)")


def test_column_vector_target_is_not_squeezed(tmp_path):
    msg = npy_error(tmp_path, np.arange(10.0).reshape(5, 2) ** 2, np.arange(5.0).reshape(5, 1))
    assert_names(msg, "y.npy", "must be 1-D", "(5, 1)", "y.ravel()")


def test_single_sample(tmp_path):
    assert_names(npy_error(tmp_path, np.ones((1, 3)), np.ones(1)), "X.npy", "1 sample")


def test_different_lengths(tmp_path):
    assert_names(npy_error(tmp_path, np.arange(10.0).reshape(5, 2) ** 2, np.arange(4.0)),
                 "X.npy", "y.npy", "5 rows", "has 4")


def test_ragged_csv_row(tmp_path):
    assert_names(csv_error(tmp_path, GOOD.replace("3,5,4", "3,5")), "d.csv line 4", "2 cells", "line 1 has 3")


@pytest.mark.parametrize("step", ["data.standardize=true", "data.whiten=zca"])
def test_constant_column_when_standardising_or_whitening(tmp_path, step):
    text = "a,b,c,y\n" + "".join(f"{i},{i % 3},7,{i * i % 5}\n" for i in range(8))
    assert_names(csv_error(tmp_path, text, step), "d.csv", "constant feature column", "column 'c'")


def test_standardising_uncentred_features_is_refused(tmp_path):
    assert_names(csv_error(tmp_path, GOOD, "data.center=false", "data.standardize=true"),
                 "data.center", "set data.center: true")


def test_more_dimensions_than_samples_when_whitening(tmp_path):
    rng = np.random.default_rng(0)
    msg = npy_error(tmp_path, rng.standard_normal((5, 8)), rng.standard_normal(5), "data.whiten=cholesky")
    assert_names(msg, "X.npy", "5 samples in 8 dimensions", "singular", "data.whiten_ridge",
                 "data.whiten_components")


def test_collinear_columns_when_whitening(tmp_path):
    text = "a,b,c,y\n" + "".join(f"{i},{i * i % 7},{2 * i + 1},{i % 4}\n" for i in range(10))
    msg = csv_error(tmp_path, text, "data.whiten=pca")
    assert_names(msg, "d.csv", "singular", "collinear", "column 'a'", "column 'c'", "data.whiten_ridge",
                 "whiten_components <= 2")
    assert "column 'b'" not in msg


@pytest.mark.parametrize("labels, found", [(["x"] * 6, "found 1: 'x' (6 rows)"),
                                           (["x", "y", "z"] * 2, "found 3: 'x' (2 rows), 'y' (2 rows)")])
def test_classification_needs_exactly_two_classes(tmp_path, labels, found):
    text = "a,b,label\n" + "".join(f"{i},{i * i % 5},{lab}\n" for i, lab in enumerate(labels))
    msg = csv_error(tmp_path, text, "data.task=classification", target="label")
    assert_names(msg, "d.csv", "column 'label'", "exactly two classes", found)


def test_iris_has_three_classes():
    with pytest.raises(DataError) as e:
        load("data.task=classification", source="sklearn", name="iris")
    assert_names(str(e.value), "sklearn iris", "exactly two classes", "found 3")


def test_constant_regression_target(tmp_path):
    text = "a,b,y\n" + "".join(f"{i},{i % 3},2.5\n" for i in range(6))
    assert_names(csv_error(tmp_path, text), "d.csv", "column 'y'", "constant", "2.5")


# ---------------------------------------------------------------- config keys and python sources

def test_unknown_target_column_suggests_the_nearest(tmp_path):
    assert_names(csv_error(tmp_path, GOOD, target="yy"), "data.target", "no column 'yy'", "did you mean 'y'")
    assert_names(csv_error(tmp_path, GOOD, target=3), "data.target", "index 3 is out of range", "3 columns")
    assert_names(csv_error(tmp_path, GOOD, drop=["a", "q"]), "data.drop[1]", "no column 'q'")
    assert_names(csv_error(tmp_path, GOOD, columns=["a"], drop=["b"]), "data.columns and data.drop")


def test_keys_the_source_does_not_read_are_refused(tmp_path):
    assert_names(csv_error(tmp_path, GOOD, n=1000), "data.n is set to 1000", "data.source 'csv'")
    assert_names(csv_error(tmp_path, GOOD, whiten_ridge=0.1), "data.whiten_ridge", "data.whiten is not 'none'")
    assert_names(csv_error(tmp_path, GOOD, "data.task=classification", scale_target=True),
                 "data.scale_target", "data.task is 'regression'")


def test_unknown_data_key_names_the_nearest_valid_key():
    with pytest.raises(config.ConfigError) as e:
        config.resolve({"data": {"delimeter": ";"}})
    assert_names(str(e.value), "data.delimeter", "did you mean 'data.delimiter'")
    with pytest.raises(config.ConfigError, match="data.kwargs: expected a mapping"):
        config.resolve({"data": {"kwargs": [1, 2]}})
    with pytest.raises(config.ConfigError, match="data.target: expected a column name or index"):
        config.resolve({"data": {"target": [1]}})


def test_npz_missing_array_and_pickled_objects(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2)), target=np.ones(3), obj=np.array([{}, 1], dtype=object))
    with pytest.raises(DataError) as e:
        load(source="npz", path=str(tmp_path / "d.npz"))
    assert_names(str(e.value), "data.y_key", "no array 'y'", "X, target, obj")
    with pytest.raises(DataError) as e:
        load(source="npz", path=str(tmp_path / "d.npz"), y_key="obj")
    assert_names(str(e.value), "data.y_key", "'obj'", "cannot be read safely")


def test_callable_errors_name_the_key():
    cases = [({"function": "tests.datasets"}, "must look like 'package.module:function'"),
             ({"function": "tests.nothere:toy"}, "data.function: cannot import 'tests.nothere'"),
             ({"function": "tests.datasets:nope"}, "has no function 'nope'"),
             ({"function": "tests.datasets:toy", "kwargs": {"size": 3}}, "data.kwargs"),
             ({"function": "tests.datasets:returns_one_array"}, "must return a pair (X, y)")]
    for spec, part in cases:
        with pytest.raises(DataError) as e:
            load(source="callable", **spec)
        assert part in str(e.value), (spec, str(e.value))


def test_unknown_source_and_sklearn_name():
    with pytest.raises(DataError) as e:
        load(source="svc")
    assert_names(str(e.value), "data.source", "unknown source 'svc'", "did you mean 'csv'", "needs data.module")
    with pytest.raises(DataError) as e:
        load(source="toy_registred", module="tests.datasets")
    assert_names(str(e.value), "did you mean 'toy_registered'", "data.module 'tests.datasets' registers no such name")
    with pytest.raises(DataError) as e:
        load(source="toy_registered", module="tests.nothere")
    assert_names(str(e.value), "data.module: cannot import 'tests.nothere'")
    with pytest.raises(DataError) as e:
        load(source="sklearn", name="breast_cancr")
    assert_names(str(e.value), "data.name", "did you mean 'breast_cancer'")


def test_registry_refuses_builtin_names_and_a_second_function():
    with pytest.raises(ValueError, match="built-in"):
        register("csv")
    import tests.datasets  # noqa: F401  registers toy_registered
    with pytest.raises(ValueError, match="already registered"):
        register("toy_registered")(lambda: None)
