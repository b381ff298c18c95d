"""The shared training loop (DESIGN.md section 11): one engine for QAT, distillation and personalization.

    from visq.train import TrainSettings, TrainTask, StepOutput, fit

    class MyTask(TrainTask):
        def modules(self): return {"model": model}
        def param_groups(self): return [{"params": list(model.parameters()), "lr": 1e-3}]
        def step(self, step, generator): return StepOutput(loss_of_a_batch_drawn_with(generator))

    fit(MyTask(), TrainSettings(steps=1000, out_dir="runs/x"))   # rerun the same call to resume
"""

from visq.train.loop import TrainResult, TrainSettings, fit, peak_memory_mb
from visq.train.run_dir import read_metrics
from visq.train.task import StepOutput, TrainTask

__all__ = ["StepOutput", "TrainResult", "TrainSettings", "TrainTask", "fit", "peak_memory_mb", "read_metrics"]
