"""Engine builds: the typed build spec (spec), the builders behind one protocol (builders; TensorRT-LLM's
built in, trtllm), filling config templates as tensorrtllm_backend's fill step does (templates) and the
build runner (run)."""
