"""The run's model as an lm-evaluation-harness LM: the harness's requests scored in-process on the weights as they
are, with the run's own tokenizer, the way cptlab's held-out evaluation scores text.

Why not lm-eval's HFLM with `pretrained=model`: it sizes what it scores by `tokenizer.vocab_size`, which leaves
out added tokens, and it re-resizes embeddings and moves the model about. Here the softmax is over every row of
the output matrix (as `cptlab.evaluation.bpb.token_nll`'s), so the new rows of an extended vocabulary are scored like
any other, and a tokenizer with more tokens than the model has rows is refused. Documents in cptlab's token
stream follow an EOS and carry no BOS, so the harness's empty context (and a rolling window's first token) is
conditioned on EOS, and text is encoded without special tokens, as the token caches encode it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from cptlab.errors import CptlabError
from cptlab.model.adapter import unwrap
from cptlab.model.loss import decoder_and_head

DEFAULT_MAX_LENGTH = 2048


class CptlabLM(TemplateLM):
    """`model` (a Hugging Face causal LM, peft-wrapped or not) with `tokenizer`; `max_length`: the longest input
    (default: the model's maximum positions); `batch_size`: sequences per forward pass."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 16, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model, tokenizer, int(batch_size)
        hf = unwrap(model)
        rows = hf.get_output_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise CptlabError(f"the tokenizer has {len(tokenizer)} tokens but the model's output matrix has {rows} "
                              "rows: the harness would mis-score the tokens beyond them")
        positions = getattr(getattr(hf, "config", None), "max_position_embeddings", None)
        self._max_length = int(max_length or positions or DEFAULT_MAX_LENGTH)
        self._device = next(model.parameters()).device
        try:  # the head on the scored positions only: no [batch, length, vocab] logits
            self._decoder, self._head = decoder_and_head(model)
        except CptlabError:  # a head that does more than a linear map: the model's own logits
            self._decoder = self._head = None

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.eos_token_id  # a document of cptlab's stream starts after an EOS

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The ids of `string` without BOS, each occurrence of the EOS token's text (e.g. "</s>") as EOS itself
        (a document boundary of cptlab's stream), whether or not the tokenizer parses special tokens in text."""
        eos = self.tokenizer.eos_token
        ids: list[int] = []
        for i, part in enumerate(string.split(eos) if eos else [string]):
            if i:
                ids.append(self.eot_token_id)
            if part:
                ids += self.tokenizer(part, add_special_tokens=bool(add_special_tokens))["input_ids"]
        return ids

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    # -- scoring ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, inputs: list[list[int]], targets: list[list[int]]) -> list[tuple[float, bool]]:
        """(sum of log p(targets), whether each target is the argmax) for rows whose last len(target) positions
        predict the target; one forward pass over the batch (right-padded: causal attention never looks ahead)."""
        width = max(map(len, inputs))
        ids = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)
        rows, cols, flat = [], [], []
        for i, (inp, tgt) in enumerate(zip(inputs, targets)):
            ids[i, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            rows += [i] * len(tgt)
            cols += range(len(inp) - len(tgt), len(inp))
            flat += tgt
        ids = ids.to(self._device)
        if self._head is not None:
            hidden = self._decoder(input_ids=ids, use_cache=False).last_hidden_state
            logits = self._head(hidden[rows, cols])
        else:
            logits = self.model(input_ids=ids, use_cache=False).logits[rows, cols]
        logp = F.log_softmax(logits.float(), dim=-1)
        flat_t = torch.tensor(flat, dtype=torch.long, device=logp.device)
        picked = logp.gather(1, flat_t[:, None])[:, 0].double().cpu()
        greedy = (logp.argmax(dim=-1) == flat_t).cpu()
        out, start = [], 0
        for tgt in targets:
            end = start + len(tgt)
            out.append((float(picked[start:end].sum()), bool(greedy[start:end].all())))
            start = end
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Each request is (key, context ids, continuation ids); inputs longer than max_length lose their left end."""
        prepared = []
        for _, context, continuation in requests:
            if not continuation:
                raise CptlabError("an lm-eval request has an empty continuation; nothing to score")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            prepared.append((whole[:-1], list(continuation)[-self.max_length:]))
        was_training = self.model.training
        self.model.eval()
        results: list[tuple[float, bool] | None] = [None] * len(prepared)
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))  # like lengths share a batch
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                scores = self._score([prepared[i][0] for i in batch], [prepared[i][1] for i in batch])
                for i, score in zip(batch, scores):
                    results[i] = score
        finally:
            self.model.train(was_training)
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) in windows of max_length (each window's first input the previous window's last token, the
        first window's an EOS), as lm-eval's HFLM scores it."""
        windows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += logp
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first of the request's `until` strings."""
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for request in requests:
                context, kwargs = request.args
                kwargs = dict(kwargs or {})
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                new_tokens = int(kwargs.get("max_gen_toks", 256))
                ids = self.tok_encode(context)[-(self.max_length - new_tokens):] or [self.prefix_token_id]
                generated = self.model.generate(input_ids=torch.tensor([ids], device=self._device),
                                                attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                                                                          device=self._device),
                                                max_new_tokens=new_tokens, do_sample=False,
                                                pad_token_id=self.eot_token_id)
                text = self.tok_decode(generated[0, len(ids):].tolist())
                for stop in until:
                    text = text.split(stop)[0]
                out.append(text)
        finally:
            self.model.train(was_training)
        return out
