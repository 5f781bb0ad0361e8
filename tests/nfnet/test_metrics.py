"""`nfnet.metrics`: the run's hparams in its own event files, read back with TensorBoard's reader."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from nfnet.metrics import HPARAM_METRICS, MetricWriter, hparam_values

SETTINGS = {"variant": "nano-w0.5", "epochs": 0.125, "lr": 0.4, "batch_size": 128, "seed": 3,
            "width_mult": 0.5, "depth_mult": 1.0, "dataset": "digits[512]"}


def read_run(logdir):
    """(scalar tags, experiment, session start info) of one TensorBoard run directory."""
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return set(acc.Tags()["scalars"]), experiment, start


def test_a_run_holds_its_scalars_and_hparams_in_one_directory(tmp_path):
    writer = MetricWriter(str(tmp_path / "run"))
    writer.write_hparams(SETTINGS, group="nano-w0.5-e0.125-lr0.4-b128-s3-abc12_00000")
    writer.write(4, {"val_loss": 1.5, "val_top1": 0.5, "train_loss": 1.7, "variant": "nano"})
    writer.close()

    tags, experiment, start = read_run(tmp_path / "run")
    assert tags == {"val_loss", "val_top1", "train_loss"}  # the same run: no second directory
    # The columns: the settings that tell trials apart first (flagged `differs`, which
    # TensorBoard shows first and ticks), whole numbers as text, no domains.
    columns = [(h.name, api_pb2.DataType.Name(h.type), h.differs) for h in experiment.hparam_infos]
    assert columns == [
        ("variant", "DATA_TYPE_STRING", True),
        ("epochs", "DATA_TYPE_FLOAT64", True),
        ("lr", "DATA_TYPE_FLOAT64", True),
        ("batch_size", "DATA_TYPE_STRING", True),
        ("seed", "DATA_TYPE_STRING", True),
        ("width_mult", "DATA_TYPE_FLOAT64", False),
        ("depth_mult", "DATA_TYPE_FLOAT64", False),
        ("dataset", "DATA_TYPE_STRING", False),
    ]
    assert all(h.WhichOneof("domain") is None for h in experiment.hparam_infos)
    assert [m.name.tag for m in experiment.metric_infos] == ["val_loss", "val_top1"] == list(HPARAM_METRICS)
    assert all(m.name.group == "" for m in experiment.metric_infos)  # the run's own scalars

    values = {k: v.WhichOneof("kind") + ":" + str(getattr(v, v.WhichOneof("kind")))
              for k, v in start.hparams.items()}
    assert values == {
        "variant": "string_value:nano-w0.5", "epochs": "number_value:0.125", "lr": "number_value:0.4",
        "batch_size": "string_value:128", "seed": "string_value:3", "width_mult": "number_value:0.5",
        "depth_mult": "number_value:1.0", "dataset": "string_value:digits[512]",
    }
    assert start.group_name == "nano-w0.5-e0.125-lr0.4-b128-s3-abc12_00000"


def test_every_run_writes_the_same_experiment_so_any_one_describes_them_all(tmp_path):
    """TensorBoard reads one experiment summary per log directory, whichever run it finds first."""
    for name, settings in [("a", SETTINGS), ("b", dict(SETTINGS, variant="F0", batch_size=4096, lr=1.6))]:
        writer = MetricWriter(str(tmp_path / name))
        writer.write_hparams(settings, group=name)
        writer.close()
    assert read_run(tmp_path / "a")[1] == read_run(tmp_path / "b")[1]


def test_hparam_values_keep_the_columns_and_drop_missing_settings():
    assert hparam_values({"batch_size": 256.0, "lr": 1, "seed": None, "other": 5}) == {"lr": 1.0, "batch_size": "256"}
    assert hparam_values({}) == {}


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path / "run"), enabled=False)
    writer.write_hparams(SETTINGS, group="x")
    writer.close()
    assert not (tmp_path / "run").exists()
