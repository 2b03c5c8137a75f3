"""A packed row's forward and backward pass as one CUDA graph, captured once and replayed for every row.

A step of the packed QLoRA configs on InternLM2-1.8B's shape keeps an H200 busy about 100 ms of a
250-320 ms row; the rest of the time the GPU waits for the CPU, which launches ~3,800 kernels one
by one (bench/profile_step.py). Every row has one shape (rows are padded to pack_tokens), so the
whole pass can be captured once and replayed: one launch a row (docs/gpu.md, bench/graph_step.py).

What a graph needs, and how the step gets it:
- one shape for every row: the conversations' offsets are padded to a fixed count with empty
  conversations (`padded_boundaries`), and the loss gathers the answer positions into a fixed number
  of slots, as many as the data's fullest row has, or runs over every position with the non-answer ones
  ignored (answer_loss.fixed_shape_answer_loss) instead of selecting the answer tokens first;
- nothing read back to the host inside the pass: the decoder's check that a 4-D mask holds zeros is
  skipped for the step's own all-zero mask, which the packed-attention router ignores anyway;
- nothing random: no dropout with p > 0 anywhere in the model (LoRA dropout 0), and activation
  checkpointing saves no RNG state (there is none to restore);
- gradients at fixed addresses: the captured backward pass allocates them and every replay writes
  them (it does not add to them); the optimizer step runs eagerly on them after each replay, launched
  before the gradient norm is read back to the host (`step_reading_the_norm_last`).

The first few steps run eagerly (the layers compile, the attention route is checked). Where a
condition does not hold for the whole run (dropout, accumulated gradients, DeepSpeed, another
attention route, the CPU), the step stays eager and the log says why once; a row that does not fit
the captured shape (more conversations than the slots, a longer one than the data's max_length, or
more answer tokens than the loss's slots) runs eagerly alone.
"""
from __future__ import annotations

import functools
import logging
from collections import OrderedDict

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from xtuner_assistant.training.answer_loss import answer_targets_in_row, fixed_shape_answer_loss

_log = logging.getLogger(__name__)

EAGER_STEPS_BEFORE_CAPTURE = 3  # the first compiles the layers and checks the attention route
DOCUMENT_SLOTS = 256  # conversations a captured row may hold; a row with more runs eagerly


def padded_boundaries(document_ids: torch.Tensor, slots: int, longest: int | None = None) -> torch.Tensor | None:
    """The varlen offsets of a (1, n) row's conversations (document_attention.document_boundaries)
    padded with n to `slots` + 1 entries, empty conversations at the end; None when the row holds
    more than `slots` runs, or a conversation longer than `longest` tokens. The padding attends only
    to itself, so a padding run longer than `longest` is cut into runs of at most that length."""
    from xtuner_assistant.data.packing import PADDING_DOCUMENT
    from xtuner_assistant.training.document_attention import document_boundaries

    offsets, n = document_boundaries(document_ids)
    if longest is not None:
        padding = (document_ids.reshape(-1)[offsets[:-1].long()] == PADDING_DOCUMENT).tolist()
        cuts = [0]
        for start, end, is_padding in zip(offsets[:-1].tolist(), offsets[1:].tolist(), padding):
            if is_padding:
                cuts += range(start + longest, end, longest)
            elif end - start > longest:
                return None
            cuts.append(end)
        offsets = offsets.new_tensor(cuts)
    if offsets.numel() > slots + 1:
        return None
    padded = offsets.new_full((slots + 1,), n)
    padded[:offsets.numel()] = offsets
    return padded


def fit_graph_to_data(model, dataset) -> str | None:
    """Bound the captured row by the data it will replay: as many conversation slots as the fullest row
    holds, and its longest conversation as the attention kernel's length bound (instead of 256 slots and
    the data's max_length). Flash attention launches blocks for every slot up to that length; with the
    shipped data ~37 of 256 slots hold a conversation and none is longer than ~500 of 1,024 tokens, so
    nearly every block exits at once (docs/BENCHMARKS.md). The loss gets as many slots as the row with
    the most answer tokens has, instead of every position. No row of the data then runs eagerly.
    What was set, for the log; None where nothing was (no graph, already captured, off by
    `model.graph_shape_from_data=False`, or a dataset that does not say)."""
    step = getattr(model, "graphed_step", None)
    report = getattr(dataset, "report", None) or {}
    runs, longest = report.get("attention_runs_in_a_row"), report.get("longest_conversation")
    if step is None or step.state != "warming" or not getattr(model, "graph_shape_from_data", False) \
            or not runs or not longest:
        return None
    step.slots, step.longest = int(runs), int(longest)
    answers = report.get("most_answer_tokens_in_a_row")
    # in whole chunks of the loss, so every chunk has one shape (the bench data: 2,460 answer tokens, 2,560 slots)
    chunk = model.loss_chunk_tokens
    step.answer_slots = -(-int(answers) // chunk) * chunk if answers else None
    return (f"up to {report['most_conversations_in_a_row']} conversations of up to {step.longest} tokens a row "
            f"({step.slots} slots with the padding), "
            + (f"up to {answers} answer tokens ({step.answer_slots} slots), " if answers else "")
            + "as the data holds")


@HOOKS.register_module()
class GraphShapeFromDataHook(Hook):
    """Before training, shapes the captured CUDA graph by the run's packed data (`fit_graph_to_data`)."""

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        done = fit_graph_to_data(model, runner.train_dataloader.dataset)
        if done:
            runner.logger.info(f"GraphShapeFromDataHook: the captured step holds {done}")


def checkpoint_without_rng_state(llm) -> None:
    """Activation checkpointing that saves no RNG state: nothing random runs in a captured step, and
    saving the state reads the generator back to the host, which no capture may do."""
    for owner in llm.modules():
        if callable(getattr(owner, "_gradient_checkpointing_func", None)):
            owner._gradient_checkpointing_func = functools.partial(owner._gradient_checkpointing_func,
                                                                   preserve_rng_state=False)


def reason_not_to_graph(model, optim_wrapper) -> str | None:
    """Why the run's steps cannot be one replayed graph, or None when they can (the row checks come later)."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from xtuner_assistant.training.document_attention import _document_attention

    if not any(p.is_cuda for p in model.parameters()):
        return "the model is not on a CUDA GPU"
    if type(optim_wrapper) not in (OptimWrapper, AmpOptimWrapper):
        return f"the optimizer wrapper is {type(optim_wrapper).__name__} (DeepSpeed or another), not mmengine's own"
    if optim_wrapper._accumulative_counts != 1:
        return f"gradients are accumulated over {optim_wrapper._accumulative_counts} rows (accumulative_counts)"
    random = sorted({f"{type(m).__name__}(p={m.p})" for m in model.llm.modules()
                     if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0})
    if random:
        return f"dropout draws random numbers in every step ({', '.join(random)}); set lora_dropout=0"
    if model.checkpoint_in_compiled_layers:
        return "checkpoint_in_compiled_layers checkpoints inside the compiled layers"
    if _document_attention is None or _document_attention.varlen is None or _document_attention.route_used != "varlen":
        return "packed rows do not take the varlen attention route here"
    return None


class GraphedTrainStep:
    """`train_step` of a PackedSupervisedFinetune through one captured CUDA graph (see the module's text)."""

    def __init__(self, model, required: bool, slots: int = DOCUMENT_SLOTS, longest_conversation: int | None = None):
        """`longest_conversation`: the attention kernel's bound on a conversation's length (the data's
        max_length; None: the row length). Flash attention launches blocks for every slot up to this
        length, nearly all of them empty, so a tight bound saves most of its time (docs/BENCHMARKS.md).
        A row holding a longer conversation runs eagerly."""
        self.model, self.required, self.slots, self.longest = model, required, slots, longest_conversation
        self.answer_slots = None  # positions the loss scores: None, every one; fit_graph_to_data sets the data's
        self.eager_steps = 0
        self.state = "warming"  # -> "captured", or "off" (with self.why)
        self.why = None
        self.graph = self.inputs = self.offsets = self.mask = self.loss = None
        self.parameters = self.gradients = None

    def __call__(self, data, optim_wrapper, eager):
        # What an eager step returns must hold no autograd graph: a live one keeps the parameters' gradient
        # accumulators, which run on the stream they were made on (the default one), also inside a capture.
        eager = functools.partial(_detached, eager)
        if self.state == "off":
            return eager(data, optim_wrapper)
        if self.state == "warming":
            if self.eager_steps < EAGER_STEPS_BEFORE_CAPTURE:
                self.eager_steps += 1
                return eager(data, optim_wrapper)
            why = reason_not_to_graph(self.model, optim_wrapper)
            if why is not None:
                return self._off(why, eager, data, optim_wrapper)
        # The offsets from the row while it is still on the host: on the GPU, finding them waits for the
        # step before to finish, and the GPU then idles while the CPU prepares this one.
        on_host = data["data"] if isinstance(data.get("data"), dict) else {}
        documents = on_host.get("document_ids")
        with optim_wrapper.optim_context(self.model):
            inputs = self.model.data_preprocessor(data, True)["data"]
        fits = self._fits(inputs)
        if fits is not True and self.state == "warming":
            return self._off(fits, eager, data, optim_wrapper)
        offsets = padded_boundaries(documents if documents is not None else inputs["document_ids"],
                                    self.slots, self.longest) if fits is True else None
        if offsets is None or not self._answers_fit(on_host.get("labels"), documents, inputs):  # this row alone eagerly
            return self._eager_row(data, optim_wrapper, eager)
        if self.state == "warming":
            try:
                self._capture(inputs, offsets, optim_wrapper)
            except Exception as error:  # noqa: BLE001 -- a capture fails in as many ways as CUDA has errors
                self._release()
                return self._off(f"capturing the step failed ({type(error).__name__}: {str(error).strip()[:300]})",
                                 eager, data, optim_wrapper)
        self._fill(inputs, offsets)
        self.graph.replay()
        for parameter, gradient in zip(self.parameters, self.gradients):
            if parameter.grad is not gradient:  # an eager step in between set it to None
                parameter.grad = gradient
        optim_wrapper._inner_count += 1  # as its backward() counts
        if optim_wrapper.should_update():
            step_reading_the_norm_last(optim_wrapper)  # no zero_grad(): the next replay writes the gradients
        return OrderedDict(loss=self.loss.clone())

    def _eager_row(self, data, optim_wrapper, eager):
        """One row the captured shape does not fit. The last replay's gradients are still in .grad (no
        zero_grad after a replay): they must not be added to this row's; the next replay restores them."""
        for parameter in self.parameters or ():
            parameter.grad = None
        return eager(data, optim_wrapper)

    def _off(self, why: str, eager, data, optim_wrapper):
        from xtuner_assistant.training.settings import SettingError

        self.state, self.why = "off", why
        if self.required:
            raise SettingError(f"model.cuda_graph=True, but the step cannot be one CUDA graph: {why}")
        _log.warning("training steps run without a CUDA graph: %s", why)
        return eager(data, optim_wrapper)

    def _fits(self, inputs: dict) -> str | bool:
        ids, documents = inputs.get("input_ids"), inputs.get("document_ids")
        if documents is None or not ids.is_cuda:
            return "rows are not packed conversations on a CUDA GPU"
        if ids.shape[0] != 1:
            return f"batches hold {ids.shape[0]} rows (rows_per_batch); a captured step takes one"
        if self.inputs is not None and ids.shape != self.inputs["input_ids"].shape:
            return f"a row of {ids.shape[1]} tokens, not the captured {self.inputs['input_ids'].shape[1]}"
        return True

    def _answers_fit(self, labels, documents, inputs: dict) -> bool:
        """Whether the row's answer positions fit the loss's slots (counted on the host where it can be)."""
        if self.answer_slots is None:
            return True
        if labels is None or documents is None:
            labels, documents = inputs["labels"], inputs["document_ids"]
        return answer_targets_in_row(labels, documents) <= self.answer_slots

    def _fill(self, inputs: dict, offsets: torch.Tensor) -> None:
        for key, buffer in self.inputs.items():
            buffer.copy_(inputs[key])
        self.offsets.copy_(offsets)

    def _forward_backward(self, optim_wrapper) -> torch.Tensor:
        from xtuner_assistant.training.document_attention import DocumentAttention

        router = DocumentAttention.installed(self.model.flex_attention)
        router.documents = self.inputs["document_ids"]
        router.boundaries = (self.offsets, self._attention_bound(self.inputs["input_ids"].shape[1]))
        router.block_mask = router.allowed = None
        decoder, head = self.model.decoder_and_head()
        with optim_wrapper.optim_context(self.model):  # the autocast the compiled layers were compiled under
            hidden = decoder(input_ids=self.inputs["input_ids"], position_ids=self.inputs["position_ids"],
                             attention_mask=self.mask, use_cache=False).last_hidden_state
            loss = fixed_shape_answer_loss(hidden, self.inputs["labels"], head, self.inputs["document_ids"],
                                           self.model.loss_chunk_tokens, self.answer_slots)
        scaler = getattr(optim_wrapper, "loss_scaler", None)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        router.documents = router.boundaries = None  # the recomputation is over; no later call may take them
        return loss.detach()

    def _capture(self, inputs: dict, offsets: torch.Tensor, optim_wrapper) -> None:
        with optim_wrapper.optim_context(self.model):  # the mask's dtype as the eager step reads it, under autocast
            mask_dtype = self.model.attention_dtype()
        self._prepare(inputs, offsets, mask_dtype)
        self._record(optim_wrapper)
        self.state = "captured"
        n = inputs["input_ids"].shape[1]
        _log.warning("training steps replay one CUDA graph from here on (%d-token rows, up to %d conversations "
                     "of up to %d tokens a row, the loss on %s)", n, self.slots, self._attention_bound(n),
                     f"up to {self.answer_slots} answer tokens" if self.answer_slots else "every position")

    def _attention_bound(self, row_tokens: int) -> int:
        return min(self.longest or row_tokens, row_tokens)

    def _prepare(self, inputs: dict, offsets: torch.Tensor, mask_dtype: torch.dtype) -> None:
        """The static buffers, and the model made fit for a graph (no host reads, no RNG state)."""
        llm = self.model.llm
        decoder, _ = self.model.decoder_and_head()
        self.inputs = {key: inputs[key].clone() for key in ("input_ids", "labels", "position_ids", "document_ids")}
        self.offsets = offsets.to(inputs["input_ids"].device, copy=True)
        n = inputs["input_ids"].shape[1]
        self.mask = torch.zeros((), dtype=mask_dtype, device=inputs["input_ids"].device).expand(1, 1, n, n)
        own_update = decoder._update_causal_mask if hasattr(decoder, "_update_causal_mask") else None
        if own_update is not None:  # InternLM2's reads a 4-D mask's maximum back to the host to check it is 0
            decoder._update_causal_mask = functools.partial(_our_mask_as_is, self.mask, own_update)
        checkpoint_without_rng_state(llm)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]

    def _record(self, optim_wrapper) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as CUDA graphs need
            for _ in range(2):
                for parameter in self.parameters:
                    parameter.grad = None
                self._forward_backward(optim_wrapper)
        torch.cuda.current_stream().wait_stream(side)
        for parameter in self.parameters:
            parameter.grad = None  # the captured backward allocates them in the graph's memory
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.loss = self._forward_backward(optim_wrapper)
        self.gradients = [p.grad for p in self.parameters]

    def _release(self) -> None:
        self.graph = None
        for parameter in self.parameters or ():
            parameter.grad = None


def step_reading_the_norm_last(optim_wrapper) -> None:
    """`optim_wrapper.step()` with the clipped gradients' norm read back to the host after the optimizer's
    kernels are launched, not between clipping and them: mmengine's `_clip_grad` logs it with float(),
    which waits for the replay to end, and only then does the CPU spend its ~2-3 ms launching AdamW
    while the GPU idles. Clipping, the loss scaler and the optimizer do the same work as in `step()`."""
    norms = []

    def clip_without_reading() -> None:
        params = [p for group in optim_wrapper.optimizer.param_groups for p in group["params"]
                  if p.requires_grad and p.grad is not None]
        if params:
            norms.append(optim_wrapper.clip_func(params, **optim_wrapper.clip_grad_kwargs))

    optim_wrapper._clip_grad = clip_without_reading
    try:
        optim_wrapper.step()
    finally:
        del optim_wrapper._clip_grad  # the class's own again
    for norm in norms:
        if norm is not None:  # clip_grad_value_ returns None
            optim_wrapper.message_hub.update_scalar(f"train/{optim_wrapper.grad_name}", float(norm))


def _detached(step, data, optim_wrapper) -> OrderedDict:
    return OrderedDict((name, value.detach() if isinstance(value, torch.Tensor) else value)
                       for name, value in step(data, optim_wrapper).items())


def _our_mask_as_is(ours, own_update, attention_mask, *args, **kwargs):
    return attention_mask if attention_mask is ours else own_update(attention_mask, *args, **kwargs)
