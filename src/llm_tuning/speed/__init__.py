"""What makes training fast on a CPU with the same results: `allocator` (tcmalloc, huge pages), `cpu_matmul`
(frozen layers multiplied by oneDNN), `activations` (fewer tensors kept for backward), `packed_attention`
(causal attention per packed sample). docs/speed.md has what each gives."""
