"""On-policy preference data (Tülu 3 §5.2): prompts -> completions from a pool of models and the SFT policy ->
an LLM judge (and/or the verifiers) rates each -> binarised pairs in the released preference schema.

``config`` (PrefGenConfig), ``prompts`` (mixing, decontamination, tokenizer checks), ``judge`` (rubric, score format,
parsing), ``binarize`` (pairs and report, pure), ``run`` (the resumable, sharded worker), ``cli``.
"""
