"""The multi-task model: backbone (+LoRA) -> pooled final hidden state -> small task heads.

Heads (all in one `TaskHeads` module, which peft keeps trainable via ``modules_to_save``):
- rating: ``lo + (hi - lo) * sigmoid(w.x)``, mapped onto the data set's rating scale;
- like: a logit for P(like | user, item);
- categories: one logit per category of the data set (affinity);
- recommendation: a query ``W h`` scored against an item table (one row per catalog item) by
  cosine similarity times a learned scale, plus a per-item bias. Full-catalog scoring is one
  matrix product. The table starts from the backbone's own encoding of each item's text, so an item
  with text gets a usable row before training; the bias starts from log training popularity.
- collaborative factors (optional, `collab_dim` > 0): per-user and per-item vectors fitted on the
  training split (`mtrec.model.collaborative`) add ``<p_u, q_i>`` to the rating and like logits and
  ``<r_u, t_i>`` to every item score; an unknown user or item (index -1) gets none.
- sequential prior (optional, `sequence` given): a SASRec-shaped network (`mtrec.model.sequential`)
  fitted on the training split reads the row's history item ids in order and adds
  ``w * <s(history), e_i>`` to every item score (``w`` learned, starting at 1); with a seed ensemble
  (``model.sequence_seeds``) the mean of its networks' scores. The networks themselves are frozen
  (`freeze_sequence`); a row without history gets none.
- hybrid item tokens (optional, `item_tokens` given; LLaRA/E4SRec-style): a projector maps an item's
  collaborative embedding (the sequential prior's item row, of its first network in a seed ensemble;
  else its ranking factors, else its table row) to one input embedding of the backbone, written
  where the prompt has `ITEM_TOKEN` (`RecModel.encode`). Its output has the norm of a typical token
  embedding.
- like text term (optional, `like_text` given): the like logit becomes ``a * p + c * h + s * t + b``,
  where ``p`` is the like prior above (offsets and factors), ``h`` the like head's reading of the
  prompt (``w.x``) and ``t = mean_h cos(e_h, e_i)`` the mean cosine of the backbone's encodings of the
  row's newest k history items' texts with the named item's (frozen, in the ``item_text`` buffer;
  centred over the catalog before normalising). ``(a, c, s, b)`` start at (1, 1, 0, 0) and are fitted
  on validation after training (`mtrec.model.blend.fit_like_text`): a logistic regression stacked on
  the like head's three sources, whose combination cannot be fixed in advance (the like prior alone
  is calibrated; beside the text term it is over-confident).
- friends (only where the run trains the task): a query ``W_f h`` scored against a user table (one
  row per user, starting from the mean item-table row of the user's training items) by cosine
  times a learned scale, plus the friend prior: a per-user bias and ``<s_u, d_v>`` from the
  user-embedding factor model fitted on the training graph (`collaborative.fit_friends`).

Everything the heads do happens inside ``forward`` because peft's ModulesToSaveWrapper dispatches
calls, not attribute access, to the trained copy. Per-row lookups use ``index_select``: the backward
of ``table[index]`` (index_put_ with accumulate) is not deterministic on a multi-threaded CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.kinds import NUM_KINDS, Kind
from mtrec.model.backbone import pool_hidden
from mtrec.model.sequential import SequenceNet


class TaskHeads(nn.Module):
    """All task heads over a pooled hidden state of width `hidden`.

    Args:
        hidden: backbone hidden size.
        num_categories: size of the data set's category vocabulary (0 allowed).
        item_table: initial item table [num_items, item_dim].
        item_bias: initial per-item bias [num_items].
        rating_scale: (lo, hi) of ratings, or None for implicit data.
        rating_mean: training mean rating; the rating head starts by predicting it.
    """

    def __init__(self, hidden: int, num_categories: int, item_table: torch.Tensor, item_bias: torch.Tensor,
                 rating_scale: tuple[float, float] | None, rating_mean: float | None = None,
                 item_rating_offset: torch.Tensor | None = None, item_like_offset: torch.Tensor | None = None,
                 user_offsets: tuple[torch.Tensor, torch.Tensor] | None = None, num_users: int = 0,
                 collab_dim: int = 0, collab: dict | None = None, friends: dict | None = None,
                 sequence: dict | None = None, item_tokens: dict | None = None,
                 like_text: dict | None = None) -> None:
        super().__init__()
        item_dim = item_table.shape[1]
        self.norm = nn.LayerNorm(hidden)
        self.feature_scale = hidden ** -0.5
        self.rating = nn.Linear(hidden, 1)
        self.like = nn.Linear(hidden, 1)
        self.categories = nn.Linear(hidden, max(num_categories, 1))
        self.query = nn.Linear(hidden, item_dim, bias=False)
        self.item_table = nn.Parameter(item_table.clone().float())
        self.item_bias = nn.Parameter(item_bias.clone().float())
        # Scale 1: at the start the popularity prior in `item_bias` outweighs the untrained text
        # similarity; training raises the scale as the query learns.
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        # Per-item and per-user offsets (logit space) for the rating and like heads: the named item's
        # and the known user's own tendencies, so the backbone learns what the prompt adds on top.
        # A user or item the run does not know (cold start: index -1) gets no offset.
        zeros_i, zeros_u = torch.zeros(item_table.shape[0]), torch.zeros(num_users)
        self.item_rating_offset = nn.Parameter(_or(item_rating_offset, zeros_i))
        self.item_like_offset = nn.Parameter(_or(item_like_offset, zeros_i))
        self.user_rating_offset = nn.Parameter(_or(user_offsets and user_offsets[0], zeros_u))
        self.user_like_offset = nn.Parameter(_or(user_offsets and user_offsets[1], zeros_u))
        # Collaborative ID factors (see mtrec.model.collaborative): rating/like get <p_u, q_i> (like
        # through a learned scale), recommendation gets <r_u, t_i> for every item. Width 0: none.
        collab = collab or {}
        n_items = item_table.shape[0]
        self.user_factors = nn.Parameter(_or(collab.get("P"), torch.zeros(num_users, collab_dim)))
        self.item_factors = nn.Parameter(_or(collab.get("Q"), torch.zeros(n_items, collab_dim)))
        self.rec_user_factors = nn.Parameter(_or(collab.get("R"), torch.zeros(num_users, collab_dim)))
        self.rec_item_factors = nn.Parameter(_or(collab.get("T"), torch.zeros(n_items, collab_dim)))
        self.like_factor_scale = nn.Parameter(_or(collab.get("a"), torch.tensor(1.0)))
        # Friend head: present only when `friends` is given ({"table", "bias", "S", "D"}); shapes are
        # fixed by the data set, so `empty_heads` builds it from zeros of the same sizes.
        self.has_friends = friends is not None
        if self.has_friends:
            self.friend_query = nn.Linear(hidden, friends["table"].shape[1], bias=False)
            self.user_table = nn.Parameter(_or(friends["table"], None))
            self.friend_bias = nn.Parameter(_or(friends["bias"], None))
            self.friend_src_factors = nn.Parameter(_or(friends["S"], None))
            self.friend_dst_factors = nn.Parameter(_or(friends["D"], None))
            self.friend_log_scale = nn.Parameter(torch.tensor(0.0))
            with torch.no_grad():
                if friends["table"].shape[1] == hidden:
                    self.friend_query.weight.copy_(torch.eye(hidden))
        # Sequential prior: present only when `sequence` is given ({"shape", "state"} of
        # `mtrec.model.sequential.fit_sequence`, and "more": the states of a seed ensemble's other
        # networks, model.sequence_seeds; `empty_heads` passes the shape and Nones, no state).
        self.has_sequence = sequence is not None
        if self.has_sequence:
            self.sequence = SequenceNet(dropout=0.0, **sequence["shape"])
            more = sequence.get("more", [])
            self.sequence_members = nn.ModuleList(SequenceNet(dropout=0.0, **sequence["shape"]) for _ in more)
            for net, state in zip(self.sequence_nets(), [sequence.get("state"), *more]):
                if state is not None:
                    net.load_state_dict(state)
            self.sequence_weight = nn.Parameter(torch.tensor(1.0))
            freeze_sequence(self)
        # Hybrid item tokens: {"embed_rms": the backbone's token-embedding RMS} (`empty_heads`: 1.0, the
        # saved buffer fills it in). The source is fixed by what the heads hold.
        self.has_item_tokens = item_tokens is not None
        if self.has_item_tokens:
            self.token_source = "sequence" if self.has_sequence else "factors" if collab_dim else "table"
            width = (self.sequence.item.embedding_dim if self.has_sequence  # (only then is there a network)
                     else {"factors": collab_dim, "table": item_dim}[self.token_source])
            self.item_projector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                                nn.Linear(hidden, hidden))
            self.register_buffer("token_rms", torch.tensor(float(item_tokens.get("embed_rms", 1.0))))
        # Like text term: {"table": [items, hidden] the items' text encodings, "len": history items read}
        # (`empty_heads`: zeros of that shape, the saved buffer fills it in).
        self.has_like_text = like_text is not None
        if self.has_like_text:
            self.register_buffer("item_text", unit_text_rows(like_text["table"]))
            self.like_text_len = int(like_text["len"])
            self.like_prior_scale = nn.Parameter(torch.tensor(1.0))  # a
            self.like_head_scale = nn.Parameter(torch.tensor(1.0))  # c
            self.like_text_scale = nn.Parameter(torch.tensor(0.0))  # s
            self.like_text_bias = nn.Parameter(torch.tensor(0.0))  # b
        # log variances for uncertainty weighting (Kendall et al. 2018); unused with fixed weights
        self.log_vars = nn.Parameter(torch.zeros(NUM_KINDS))
        lo, hi = rating_scale or (0.0, 1.0)
        self.register_buffer("rating_lo", torch.tensor(float(lo)), persistent=False)
        self.register_buffer("rating_hi", torch.tensor(float(hi)), persistent=False)
        with torch.no_grad():
            if item_dim == hidden:
                self.query.weight.copy_(torch.eye(hidden))
            # zero weights: at step 0 every head outputs exactly its prior; gradients still reach them
            for lin in (self.rating, self.like, self.categories):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
            if rating_mean is not None and rating_scale is not None:
                p = min(max((rating_mean - lo) / (hi - lo), 1e-3), 1 - 1e-3)
                self.rating.bias.fill_(math.log(p / (1 - p)))

    def forward(self, pooled: torch.Tensor, item_subset: torch.Tensor | None = None,
                items: torch.Tensor | None = None, users: torch.Tensor | None = None,
                with_prior: bool = False, history: torch.Tensor | None = None,
                project: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Outputs of every head for every row (or, with `project`, the item-token embeddings).

        Args:
            pooled: [B, hidden] pooled backbone states.
            item_subset: limit item scores to these columns (sampled softmax).
            items: [B] the item each row names (rating/like rows), whose offsets are added; -1 or
                None: none.
            users: [B] the user of each row, whose offsets are added; -1 (unknown) or None: none.
            with_prior: also return ``item_prior`` [B, items]: the part of ``item_logits`` that the
                prompt cannot move (the per-item bias plus the collaborative ``<r_u, t_i>``); the rest,
                ``item_logits - item_prior``, is the backbone's (scaled cosine of query and table).
                ``item_logits`` is computed exactly as without it.
            history: [B, L] each row's history item ids + 1, oldest first, left-padded with 0 (what
                the sequential prior reads; `mtrec.tasks.history_ids`); None: no sequential prior.
            project: [n] item indices: return their hybrid item-token embeddings [n, hidden] instead
                (`RecModel.encode`; through ``forward`` because peft's wrapper dispatches calls only).
        """
        if project is not None:
            return self.item_token_embeddings(project)
        # Full precision whatever the autocast around the model (bf16 on a GPU or an AVX-512 CPU): under
        # bf16 a ranking score of ~10 is rounded to 0.06, so the priors' scores tie and reorder (on
        # MovieLens-100K 124 of 500 test targets moved by 1-5 places against the same priors in fp32) and
        # the model would not serve the ranking its priors give. The heads are a few small matmuls.
        with torch.autocast(pooled.device.type, enabled=False):
            return self._outputs(pooled, item_subset, items, users, with_prior, history)

    def _outputs(self, pooled: torch.Tensor, item_subset: torch.Tensor | None, items: torch.Tensor | None,
                 users: torch.Tensor | None, with_prior: bool,
                 history: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """`forward`'s outputs (see there), in full precision."""
        # LayerNorm then 1/sqrt(hidden): unit-norm features, so one Adam step on a head's weights moves
        # its logit by about lr * sqrt(hidden) instead of lr * hidden (small, noisy batches stay gentle)
        x = self.norm(pooled.float()) * self.feature_scale
        rating_z, like_z = self.rating(x).squeeze(-1), self.like(x).squeeze(-1)
        like_head = like_z
        for index, rating_off, like_off in ((items, self.item_rating_offset, self.item_like_offset),
                                            (users, self.user_rating_offset, self.user_like_offset)):
            if index is not None and len(rating_off):
                known = (index >= 0).float()
                safe = index.clamp(min=0)
                rating_z = rating_z + known * rating_off.index_select(0, safe)
                like_z = like_z + known * like_off.index_select(0, safe)
        table, bias, rec_items = self.item_table, self.item_bias, self.rec_item_factors
        if item_subset is not None:
            table, bias, rec_items = (t.index_select(0, item_subset) for t in (table, bias, rec_items))
        q = F.normalize(self.query(x), dim=-1)
        item_logits = self.log_scale.exp() * (q @ F.normalize(table, dim=-1).T) + bias
        item_prior = bias.expand_as(item_logits) if with_prior else None
        if users is not None and self.user_factors.shape[1]:
            known_u = (users >= 0).float()[:, None]
            u = users.clamp(min=0)
            collab = (known_u * self.rec_user_factors.index_select(0, u)) @ rec_items.T
            item_logits = item_logits + collab
            if with_prior:
                item_prior = item_prior + collab
            if items is not None:
                known_i = (items >= 0).float()[:, None]
                dot = (known_u * self.user_factors.index_select(0, u) * known_i
                       * self.item_factors.index_select(0, items.clamp(min=0))).sum(-1)
                rating_z = rating_z + dot
                like_z = like_z + self.like_factor_scale * dot
        if self.has_like_text and history is not None and items is not None:
            like_z = (self.like_prior_scale * (like_z - like_head) + self.like_head_scale * like_head
                      + self.like_text_scale * self.like_text_similarity(history, items) + self.like_text_bias)
        if self.has_sequence and history is not None:
            own = history[:, -self.sequence.pos.num_embeddings:]  # its width of a wider history
            seq = self.sequence_weight * self.sequence_scores(own, item_subset)
            item_logits = item_logits + seq
            if with_prior:
                item_prior = item_prior + seq
        if self.has_friends:
            fq = F.normalize(self.friend_query(x), dim=-1)
            friend_logits = self.friend_log_scale.exp() * (fq @ F.normalize(self.user_table, dim=-1).T) + self.friend_bias
            friend_prior = self.friend_bias.expand_as(friend_logits) if with_prior else None
            if users is not None and self.friend_src_factors.shape[1]:
                known_u = (users >= 0).float()[:, None]
                social = (known_u * self.friend_src_factors.index_select(0, users.clamp(min=0))) @ self.friend_dst_factors.T
                friend_logits = friend_logits + social
                if with_prior:
                    friend_prior = friend_prior + social
        out = {
            "rating": self.rating_lo + (self.rating_hi - self.rating_lo) * torch.sigmoid(rating_z),
            "like_logit": like_z,
            "category_logits": self.categories(x),
            "item_logits": item_logits,
            "log_vars": self.log_vars,
        }
        if self.has_friends:
            out["friend_logits"] = friend_logits
        if with_prior:
            out["item_prior"] = item_prior
            if self.has_friends:
                out["friend_prior"] = friend_prior
        return out

    def sequence_nets(self) -> list[SequenceNet]:
        """The sequential prior's networks: one, or a seed ensemble's (``model.sequence_seeds``)."""
        return [self.sequence, *self.sequence_members]

    def sequence_scores(self, history: torch.Tensor, item_subset: torch.Tensor | None = None) -> torch.Tensor:
        """[B, items] the sequential prior's scores <s(history), e_i> (0 for a row without history);
        a seed ensemble's mean over its networks."""
        nets, real = self.sequence_nets(), (history > 0).any(1, keepdim=True).float()
        total = 0.0
        for net in nets:
            table = net.catalog() if item_subset is None else net.catalog().index_select(0, item_subset)
            total = total + (real * net(history)[:, -1]) @ table.T
        return total / len(nets)

    def like_text_similarity(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B] `text_similarity` of each row's newest `like_text_len` history items with its item."""
        return text_similarity(self.item_text, history[:, -self.like_text_len:], items)

    def item_token_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        """[n, hidden] the input embeddings of hybrid item tokens for `items` (see the module docstring)."""
        source = {"sequence": lambda: self.sequence.item.weight.index_select(0, items + 1),
                  "factors": lambda: self.rec_item_factors.index_select(0, items),
                  "table": lambda: self.item_table.index_select(0, items)}[self.token_source]()
        out = F.normalize(self.item_projector(source.float()), dim=-1)
        return out * self.token_rms * out.shape[-1] ** 0.5

    def train(self, mode: bool = True):
        super().train(mode)
        if self.has_sequence:
            for net in self.sequence_nets():
                net.eval()  # a fitted prior: no dropout, whatever the heads' mode
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs saved before the friends kind existed hold one log-variance per item kind: pad with
        # zeros (the starting value) rather than refuse them
        key = prefix + "log_vars"
        if key in state_dict and state_dict[key].shape[0] < NUM_KINDS:
            old = state_dict[key]
            state_dict[key] = torch.cat([old, old.new_zeros(NUM_KINDS - old.shape[0])])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def text_similarity(unit: torch.Tensor, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[B] the mean cosine of each row's history items with its item, from `unit` [items, d] unit rows
    (`history` [B, L] item ids + 1, 0 for padding; `items` [B], -1 for none); 0 without history or item."""
    real = (history > 0).float()
    enc = unit.index_select(0, (history - 1).clamp(min=0).reshape(-1)).view(*history.shape, -1)
    profile = (real[..., None] * enc).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
    target = unit.index_select(0, items.clamp(min=0))
    return (items >= 0).float() * (profile * target).sum(-1)


def unit_text_rows(encodings: torch.Tensor) -> torch.Tensor:
    """The like text term's item rows: `encodings` centred over the catalog, then unit length."""
    enc = torch.as_tensor(encodings).detach().float()
    return F.normalize(enc - enc.mean(0), dim=-1)


def freeze_sequence(model: nn.Module) -> nn.Module:
    """Freeze the sequential prior's network in every `TaskHeads` of `model` (its weight ``w`` keeps
    training). Needed again after peft wraps the heads: ``modules_to_save`` makes its copy trainable."""
    for module in model.modules():
        if isinstance(module, TaskHeads) and module.has_sequence:
            for net in module.sequence_nets():
                net.requires_grad_(False)
    return model


def _or(value: torch.Tensor | None, default: torch.Tensor | None) -> torch.Tensor:
    return (default if value is None else torch.as_tensor(value)).detach().clone().float()


class RecModel(nn.Module):
    """Backbone + pooling + heads. One code path for decoders and encoders."""

    def __init__(self, backbone: nn.Module, heads: TaskHeads, pooling: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.pooling = pooling

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               item_slots: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled final hidden states. `item_slots` [B, T]: the item index at each hybrid item token's
        position (-1 elsewhere); there the input embedding is the heads' projection of that item."""
        if item_slots is None or not bool((item_slots >= 0).any()):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        else:
            where = item_slots >= 0
            embeds = self.backbone.get_input_embeddings()(input_ids)
            vectors = self.heads(None, project=item_slots[where]).to(embeds.dtype)
            embeds = embeds.masked_scatter(where[..., None], vectors)  # row-major, the order of item_slots[where]
            out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask)
        return pool_hidden(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, item_subset: torch.Tensor | None = None,
                items: torch.Tensor | None = None, users: torch.Tensor | None = None,
                with_prior: bool = False, history: torch.Tensor | None = None,
                item_slots: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        heads_args = (self.encode(input_ids, attention_mask, item_slots), item_subset, items, users)
        # only passed when asked, so a model traced or compiled without them sees the old call
        extra = ({"with_prior": True} if with_prior else {}) | ({} if history is None else {"history": history})
        return self.heads(*heads_args, **extra)


def row_losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
               item_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's loss under its own kind: squared error (rating), BCE (like), cross-entropy against
    the uniform distribution over the target's categories (categories), softmax cross-entropy over
    the item logits (recommendation; `item_labels` = the target's column when logits are sampled)."""
    kind = batch["kind"]
    rating = F.mse_loss(out["rating"], batch["rating"], reduction="none")
    like = F.binary_cross_entropy_with_logits(out["like_logit"], batch["like"], reduction="none")
    cats = -(batch["category_target"] * F.log_softmax(out["category_logits"], -1)).sum(-1)
    labels = batch["item"] if item_labels is None else item_labels
    rec = F.cross_entropy(out["item_logits"], labels.clamp(min=0), reduction="none")
    per_row = torch.zeros_like(rating)
    losses = [(Kind.RATING, rating), (Kind.LIKE, like), (Kind.CATEGORIES, cats), (Kind.RECOMMENDATION, rec)]
    if "friend_logits" in out and "friend" in batch:
        losses.append((Kind.FRIENDS, F.cross_entropy(out["friend_logits"], batch["friend"].clamp(min=0), reduction="none")))
    for k, loss in losses:
        per_row = torch.where(kind == k, loss, per_row)
    return per_row


def multitask_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: torch.Tensor,
                   uncertainty: bool, item_labels: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sum of per-kind mean losses over the kinds present in the batch.

    Args:
        out: `TaskHeads` outputs.
        batch: ``kind`` [B], ``rating`` [B], ``like`` [B], ``category_target`` [B, C] (rows sum to 1
            where the kind is categories), ``item`` [B] (target item index).
        weights: fixed weight per kind [NUM_KINDS].
        uncertainty: use learned log-variances instead: sum_k loss_k * exp(-s_k) + s_k.
        item_labels: for sampled softmax, the target's column in ``item_logits`` per row.

    Returns:
        (total loss, per-kind mean loss [NUM_KINDS] (0 where absent), per-kind row counts [NUM_KINDS]).
        All reductions are tensor ops: no host sync, so the step loop never waits on the device.
    """
    per_row = row_losses(out, batch, item_labels)
    onehot = F.one_hot(batch["kind"], NUM_KINDS).float()  # [B, K]
    counts = onehot.sum(0)
    per_kind = (onehot * per_row[:, None]).sum(0) / counts.clamp(min=1)
    present = (counts > 0).float()
    if uncertainty:
        s = out["log_vars"]
        total = (present * (per_kind * torch.exp(-s) + s)).sum()
    else:
        # 0 * s keeps the log-variances in the graph, so DDP does not see an unused parameter
        total = (present * weights * per_kind).sum() + 0.0 * out["log_vars"].sum()
    return total, per_kind.detach(), counts
