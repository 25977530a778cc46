"""The callbacks of ``conf/callbacks``: representation health, the k-NN monitor, the checkpoint on
preemption, throughput."""
