"""The machinery under the façade: input checks (``inputs``), choosing the adapter that fits a
host (``adapter_choice``) and running attributions on it with batching, hook hygiene and
memory limits (``engine``). It imports the plugin contract and lower layers only; the
subsystems (training, evaluation, the zoo) and the façade build on it."""
