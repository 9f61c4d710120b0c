"""megatron-tulu: Tülu 3 post-training on megatron-core."""
