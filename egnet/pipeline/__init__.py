"""Kubeflow Pipelines glue: the steps the components call (``steps``), the KFP API client
(``client``), TrainJob/PyTorchJob manifests and their Kubernetes client (``trainjob``), the
pipeline plug-in look-up (``definition``), and the `egnet pipeline` commands (``commands``:
compile, run --local with kfp.local, submit, schedule)."""
