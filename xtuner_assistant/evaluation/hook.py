"""The evaluation hook: scores identity and collapse while `xtuner train` runs, keeps the best
checkpoint, and stops training once the model collapses.

Every `every_n_iters` iterations (and before training, and at the end) the model answers, greedily
and through its own chat template, the held-out identity questions (never trained on) and a
bilingual pool of general prompts (identity_evaluation.py). The scores
(metrics.py) go to the visualizer (scalars.json), to
`<work_dir>/identity_eval/history.jsonl`, and with every answer to a readable
`<work_dir>/identity_eval/iter_NNNNNN.txt` (and .json).

Best checkpoint: among evaluations that are not collapsed or looping, the highest
`metrics.combined_score` (identity_accuracy + retention - leakage - repetition - collapse); the
earlier iteration wins a tie. It is saved as `<work_dir>/best_checkpoint.pth` (convertible like
any iter_N.pth) and described in `identity_eval/summary.json`.

Early stop: an evaluation is unhealthy when general answers collapse (collapse >= threshold) or
answers loop (repetition >= threshold and clearly above the base model's own, measured at
iteration 0). After `patience` unhealthy evaluations in a row the hook
ends training cleanly (the run exits 0) and says why.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager, nullcontext

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from xtuner_assistant.data.identity import LANGUAGES
from xtuner_assistant.evaluation import metrics, records
from xtuner_assistant.evaluation.identity_evaluation import DEFAULT_MAX_NEW_TOKENS, IdentityEvaluation
from xtuner_assistant.evaluation.records import BEST_CHECKPOINT
from xtuner_assistant.paths import write_json_atomic, write_text_atomic


@HOOKS.register_module()
class IdentityEvalHook(Hook):
    # Runs after the logger, before CheckpointHook (VERY_LOW) in the same iteration.
    priority = "LOW"

    def __init__(self, name: str, author: str = "", base_model: str = "", seed: int = 0,
                 held_out_fraction: float = 0.25, languages=LANGUAGES, every_n_iters: int = 25,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 0, patience: int = 2,
                 collapse_threshold: float = metrics.Thresholds.collapse,
                 repetition_threshold: float = metrics.Thresholds.repetition,
                 repetition_margin: float = metrics.Thresholds.repetition_margin,
                 save_best: bool = True, early_stop: bool = True, evaluate_before_train: bool = True,
                 identity_sentences=(), tokenizer=None, base_model_path: str | None = None):
        # The same phrasebook (name, seed, split) as the training data, so held-out means held out.
        self.evaluation = IdentityEvaluation(name, author, base_model, seed, held_out_fraction, languages,
                                             identity_sentences, max_new_tokens, batch_size)
        self.every_n_iters = every_n_iters
        self.max_new_tokens = max_new_tokens
        self.patience = patience
        self.thresholds = metrics.Thresholds(collapse_threshold, repetition_threshold, repetition_margin)
        self.save_best = save_best
        self.early_stop = early_stop
        self.evaluate_before_train = evaluate_before_train
        self.tokenizer_cfg = tokenizer
        self.base_model_path = base_model_path
        self.tokenizer = None
        self.base_answers: list[str] = []
        self.best: dict | None = None
        self.base_scores: dict | None = None  # iteration 0: how much the base model itself loops
        self.unhealthy_streak = 0
        self.stopped: dict | None = None
        self.eval_seconds = 0.0
        self.last_evaluated_iter = -1

    # ----------------------------------------------------------------- mmengine hook points
    def before_train(self, runner) -> None:
        self._restore(runner)
        model = _unwrap(runner.model)
        self.tokenizer = self._build_tokenizer(runner)
        path = self.base_model_path or _llm_path(runner)
        from xtuner_assistant.models.answers import base_model_answers, cached_answers

        start = time.monotonic()
        fresh = runner.iter == 0
        if fresh:
            # LoRA starts as a no-op, so the model about to be trained IS the base model.
            with _inference(model):
                self.base_answers = cached_answers(path, self.evaluation.general_prompts, self.max_new_tokens,
                                                   self.evaluation.generator(model.llm, self.tokenizer))
        else:
            self.base_answers = base_model_answers(path, self.evaluation.general_prompts, self.max_new_tokens)
        self.eval_seconds += time.monotonic() - start
        if fresh and self.evaluate_before_train:
            self._evaluate(runner, 0, general_answers=self.base_answers)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        # runner.iter counts finished iterations minus one here; CheckpointHook names files iter + 1.
        if self.every_n_train_iters(runner, self.every_n_iters) or self.is_last_train_iter(runner):
            self._evaluate(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        if self.last_evaluated_iter != runner.iter:
            self._evaluate(runner, runner.iter)
        best = (f"best checkpoint: iteration {self.best['iter']} ({self.best['checkpoint']}, score "
                f"{self.best['scores']['combined']:.3f})") if self.best else "no healthy evaluation, no best checkpoint"
        runner.logger.info(f"IdentityEvalHook: {best}; evaluation took {self.eval_seconds:.0f} s in all. "
                           f"Scores per evaluation: {records.eval_dir(runner.work_dir)}")

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, runner, iteration: int, general_answers: list[str] | None = None) -> dict:
        start = time.monotonic()
        model = _unwrap(runner.model)
        identity_prompts = self.evaluation.identity_prompts
        prompts = identity_prompts + (self.evaluation.general_prompts if general_answers is None else [])
        with _inference(model) as merged_layers:
            # One pass over all prompts: full batches, the fewest generation loops.
            answers = self.evaluation.generator(model.llm, self.tokenizer)(prompts, self.max_new_tokens)
        if merged_layers and self.last_evaluated_iter < 0:
            runner.logger.info(f"IdentityEvalHook: generating with {merged_layers} LoRA layers merged into their "
                               "dequantized 4-bit weights for each evaluation (as `merge` will write them)")
        identity_answers = answers[:len(identity_prompts)]
        if general_answers is None:
            general_answers = answers[len(identity_prompts):]
        scores = self.evaluation.score(identity_answers, general_answers, self.base_answers)
        seconds = time.monotonic() - start
        self.eval_seconds += seconds
        scores["eval_seconds"] = round(seconds, 2)
        self.last_evaluated_iter = iteration
        self._record(runner, iteration, scores, identity_answers, general_answers)
        if iteration == 0:
            self.base_scores = scores
        else:
            self._keep_best(runner, iteration, scores)
            self._check_collapse(runner, iteration, scores)
        # After every evaluation: a resumed run picks up the best so far and the unhealthy streak.
        self._write_summary(runner)
        return scores

    # ----------------------------------------------------------------- outputs
    def _record(self, runner, iteration: int, scores: dict, identity_answers, general_answers) -> None:
        runner.visualizer.add_scalars({f"identity_eval/{k}": v for k, v in scores.items() if v is not None},
                                      step=iteration)
        folder = records.eval_dir(runner.work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(records.history_file(runner.work_dir), "a", encoding="utf-8") as history:
            history.write(json.dumps({"iter": iteration, **scores}, ensure_ascii=False) + "\n")
        evaluation = self.evaluation
        write_text_atomic(folder / f"iter_{iteration:06d}.txt", evaluation.readable(
            f"iteration {iteration}", scores, identity_answers, general_answers, self.base_answers))
        write_json_atomic(folder / f"iter_{iteration:06d}.json", {
            "iter": iteration, "scores": scores,
            **evaluation.answers_record(identity_answers, general_answers, self.base_answers)})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float) and k != "eval_seconds")
        runner.logger.info(f"IdentityEvalHook iter {iteration}: {shown} ({scores['eval_seconds']:.1f} s)")

    def _keep_best(self, runner, iteration: int, scores: dict) -> None:
        if self.unhealthy(scores) or (self.best and scores["combined"] <= self.best["scores"]["combined"]):
            return
        self.best = {"iter": iteration, "scores": scores, "checkpoint": None}
        if self.save_best:
            self.best["checkpoint"] = _save_checkpoint(runner, BEST_CHECKPOINT)
        runner.logger.info(f"IdentityEvalHook: new best at iteration {iteration} (score {scores['combined']:.3f})")

    def _check_collapse(self, runner, iteration: int, scores: dict) -> None:
        reasons = self.unhealthy(scores)
        self.unhealthy_streak = self.unhealthy_streak + 1 if reasons else 0
        if not (self.early_stop and self.unhealthy_streak >= self.patience):
            return
        best = (f"keep the best checkpoint, iteration {self.best['iter']}: {self.best['checkpoint']}"
                if self.best else "no evaluation before it was healthy, so there is no best checkpoint")
        message = (f"stopping training early at iteration {iteration}: {'; '.join(reasons)} for "
                   f"{self.unhealthy_streak} evaluation(s) in a row (patience {self.patience}). Training on "
                   f"would only make it worse; {best}.")
        self.stopped = {"iter": iteration, "reason": "; ".join(reasons), "message": message}
        runner.logger.warning(f"IdentityEvalHook: {message}")
        runner.train_loop.stop_training = True

    def unhealthy(self, scores: dict) -> list[str]:
        return metrics.unhealthy(scores, self.thresholds, self.base_scores)

    def _write_summary(self, runner) -> None:
        write_json_atomic(records.summary_file(runner.work_dir), {
            "name": self.evaluation.name,
            "rule": "best = highest identity_accuracy + retention - leakage - repetition - collapse among "
                    f"evaluations that are not unhealthy (collapse >= {self.thresholds.collapse}, or repetition >= "
                    f"{self.thresholds.repetition} and more than {self.thresholds.repetition_margin} above the base "
                    "model's); earlier iteration wins ties",
            "base_scores": self.base_scores,
            "best": self.best,
            "stopped_early": self.stopped,
            "unhealthy_streak": self.unhealthy_streak,
            "last_evaluated_iter": self.last_evaluated_iter,
        })

    def _restore(self, runner) -> None:
        """On resume, pick up the best score so far (so a worse checkpoint does not replace it) and the
        count of unhealthy evaluations in a row (so a collapse that began before the pause still stops)."""
        saved = records.read_summary(runner.work_dir)
        self.best, self.base_scores = saved.get("best"), saved.get("base_scores")
        self.unhealthy_streak = saved.get("unhealthy_streak", 0)

    def _build_tokenizer(self, runner):
        if self.tokenizer_cfg is not None:
            from xtuner.registry import BUILDER

            return BUILDER.build(self.tokenizer_cfg) if isinstance(self.tokenizer_cfg, dict) else self.tokenizer_cfg
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(_llm_path(runner), trust_remote_code=True)


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _llm_path(runner) -> str:
    return runner.cfg.model.llm.pretrained_model_name_or_path


@contextmanager
def _inference(model, merge_adapter: bool = True):
    """Eval mode with the KV cache on and activation checkpointing off, as generation needs, and LoRA
    over 4-bit weights merged for the pass (yields how many layers); everything back as it was
    afterwards (like xtuner's EvaluateChatHook)."""
    from xtuner_assistant.models.generation import adapter_merged_for_generation

    # The flags alone, not xtuner's activation_checkpointing_enable() afterwards: that would make the
    # checkpointing reentrant again and drop the per-layer choice training set up (fused_kernels.py).
    checkpointing = [m for m in model.llm.modules() if getattr(m, "gradient_checkpointing", False) is True]
    use_cache = model.llm.config.use_cache
    was_training = model.training
    for module in checkpointing:
        module.gradient_checkpointing = False
    model.llm.config.use_cache = True
    model.eval()
    try:
        with adapter_merged_for_generation(model.llm) if merge_adapter else nullcontext(0) as merged_layers:
            yield merged_layers
    finally:
        for module in checkpointing:
            module.gradient_checkpointing = True
        model.llm.config.use_cache = use_cache
        model.train(was_training)


def _save_checkpoint(runner, filename: str) -> str:
    """Saved under a temporary name, then renamed: the best checkpoint is never half written."""
    temporary = f".{filename}.tmp"
    runner.save_checkpoint(runner.work_dir, temporary, save_optimizer=False, save_param_scheduler=False,
                           by_epoch=False)
    runner.call_hook("wait_for_checkpoint_writes")  # BackgroundCheckpointHook's, where the run has it
    final = os.path.join(runner.work_dir, filename)
    os.replace(os.path.join(runner.work_dir, temporary), final)
    return final
