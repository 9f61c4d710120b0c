"""Data layer: formats, Tülu chat template + masking, mixtures, packing, caches, decontamination, synthetic suite.

Public API (import from the submodules; nothing heavy is imported here):

- ``tokenizer``: ``load_tokenizer(path)``, ``build_llama3_tokenizer(out_dir)``, ``train_bpe_tokenizer(texts, out_dir)``
- ``chat``: ``TULU_CHAT_TEMPLATE``, ``render(messages, tok, template)``, ``tokenize_sft(messages, tok, max_len)``,
  ``tokenize_preference(row, tok, max_len)``, ``tokenize_prompt(row, tok, max_len)``
- ``loaders``: ``MixtureConfig``/``DatasetSource``, ``mixture_from_dict``, ``read_rows``, ``mix``,
  ``build_dataset(cfg, kind, tok, max_len, template, cache_dir)`` -> ``(datasets.Dataset, DataReport)``
- ``packing``: ``pack_sft(examples, seq_len, pad_id)``, ``block_causal_mask(cu_seqlens, seq_len)``
- ``sampler``: ``EpochSampler``, ``shard_batch``, ``collate``, ``collate_preference``
- ``decontaminate``: ``decontaminate(train, evals)`` and ``python -m megatron_tulu.data.decontaminate``
- ``synthetic``: ``generate(out_dir, seed, scale)`` and ``python -m megatron_tulu.data.synthetic --out DIR``
- ``inspect``: ``python -m megatron_tulu.data.inspect FILE --kind sft|preference|rlvr --tokenizer DIR`` prints rows as
  their stage tokenizes them (decoded ids, loss-carrying tokens, counts, truncation; RLVR ground truth and verifier)
"""
