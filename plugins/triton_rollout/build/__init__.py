"""Engine builds: the typed build spec (spec), the builders behind one protocol (builders; TensorRT-LLM's
built in, trtllm) and the build runner (run)."""
