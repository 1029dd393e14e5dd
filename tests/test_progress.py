"""The console of a training job: the progress line in a terminal, in a log, and verbose."""
import io
import math

from csg.distributed.progress import ProgressLine
from tests.helpers import Terminal


def _row(epoch, path="csg", l1=0.5):
    return {"epoch": epoch, "path": path, "loss_total": 1.0 / (epoch + 1), "test_acc": 0.5 + epoch / 100,
            "l1_density": l1, "epoch_time_s": 2.0}


def _feed(line, epochs):
    for epoch in range(epochs):
        line.epoch(_row(epoch), images_per_s=1234.0)
    line.close()


def test_in_a_log_a_line_at_the_first_epoch_about_every_tenth_and_the_last():
    log = io.StringIO()
    _feed(ProgressLine("r", 45, log), 45)
    epochs = [line.split()[2] for line in log.getvalue().splitlines()]
    assert epochs == ["1/45", "4/45", "8/45", "12/45", "16/45", "20/45", "24/45", "28/45", "32/45", "36/45",
                      "40/45", "44/45", "45/45"]


def test_in_a_terminal_one_line_is_rewritten_in_place_within_the_terminal_width(monkeypatch):
    """The start line names the run, so the line in place leaves the run id out."""
    monkeypatch.setenv("COLUMNS", "200")
    terminal = Terminal()
    _feed(ProgressLine("r", 5, terminal), 5)
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 5
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("epoch 5/5") and "1,234 img/s" in last and "2.0s/epoch" in last
    monkeypatch.setenv("COLUMNS", "40")
    narrow = Terminal()
    _feed(ProgressLine("r", 5, narrow), 5)
    assert max(len(part) for part in narrow.getvalue().split("\r")) <= 40


def test_the_line_carries_path_loss_accuracy_density_speed_and_eta():
    line = ProgressLine("run-1", 10, io.StringIO())
    text = line.format(_row(2), 1500.0, eta_s=125)
    assert text.startswith("[run-1] epoch 3/10   csg") and "loss 0.3333" in text and "test_acc 0.5200" in text
    assert "l1_density 0.5000" in text and "1,500 img/s" in text and text.endswith("ETA 2m05s")
    assert "l1_density" not in line.format(_row(2, "std", math.nan), 1500.0, eta_s=3600 * 2 + 60)
    assert line.format(_row(2), 1.0, eta_s=3600 * 2 + 60).endswith("ETA 2h01m")


def test_verbose_prints_every_epoch_and_a_resume_on_its_own_line():
    terminal = Terminal()
    line = ProgressLine("r", 30, terminal, verbose=True)
    line.resumed(9)
    for epoch in range(10, 30):
        line.epoch(_row(epoch), 10.0)
    lines = terminal.getvalue().splitlines()
    assert lines[0] == "[r] resuming after epoch 10" and len(lines) == 21 and "\r" not in terminal.getvalue()


def test_trial_events_name_the_settings_and_how_each_trial_ended():
    from types import SimpleNamespace

    from csg.distributed.trial_events import TrialEvents

    said = []
    events = TrialEvents(epochs=6, say=said.append)
    config = {"schedule": (3, 1), "lambda1": 1.0, "lambda2": 0.0123456, "g_density": 0.1, "psi": "l1"}
    running = SimpleNamespace(trial_id="a_00000", config=config, status="RUNNING", last_result={})
    stopped = SimpleNamespace(trial_id="a_00001", config=config, status="TERMINATED",
                              last_result={"training_iteration": 2, "test_acc": 0.9})
    events.on_trial_start(0, [running, stopped], running)
    events.on_trial_complete(0, [running, stopped], stopped)
    assert said[0] == ("trial a_00000 started: period=3 csg_epochs=1 lambda1=1 lambda2=0.0123 g_density=0.1 "
                       "psi=l1 (1 running, 0 pending)")
    assert said[1] == "trial a_00001 stopped by the scheduler after 2/6 epochs, test_acc 0.9000 (1/2 done)"


def test_trial_events_pickle_after_ray_train_replaced_print(monkeypatch):
    """Ray Train V2 swaps builtins.print in the driver; Tune then pickles its callbacks."""
    import builtins
    import pickle

    from csg.distributed.trial_events import TrialEvents

    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    events = pickle.loads(pickle.dumps(TrialEvents(epochs=3)))
    assert events.epochs == 3 and events.say.__module__ == "csg.distributed.trial_events"


def test_the_line_shows_the_share_of_time_spent_waiting_for_data():
    line = ProgressLine("r", 10, io.StringIO())
    assert "data_wait 12%" in line.format({**_row(2), "data_wait": 0.123}, 1500.0, eta_s=5)
    assert "data_wait" not in line.format({**_row(2), "data_wait": math.nan}, 1500.0, eta_s=5)  # an older row
