"""The batch pipeline: a job file expanded into one manifest row per image, made by local worker
processes (one per device) or Ray actors, resumable, with every image written once to one store.

- jobs.py: read a JSONL/CSV job file and expand each line into per-image requests with stable keys;
- manifest.py: the SQLite manifest (the source of truth): claim with a lease, complete, fail, summary;
- store.py: where images land (a local folder or any fsspec URL), written atomically;
- local.py: workers on this machine (in-process for one device, a process per device otherwise);
- ray_runner.py: the same loop with Ray actors, the driver owning the manifest.
"""
