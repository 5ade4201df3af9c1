"""``make demo``: sweep the example interior in 2 styles x 4 seeds and print the contact sheet.

Uses real SD 1.5 (base + depth and lineart ControlNets) when those weights are in the
Hugging Face cache. Otherwise it says so and uses the offline ``tiny`` model, whose images
are noise that prove the plumbing end to end.
"""

import os
import subprocess
import sys

SD15 = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11f1p_sd15_depth",
        "lllyasviel/control_v11p_sd15_lineart")


def sd15_available():
    from huggingface_hub import try_to_load_from_cache

    for repo in SD15:
        name = "model_index.json" if repo == SD15[0] else "config.json"
        if not isinstance(try_to_load_from_cache(repo, name), str):
            return False, repo
    return True, ""


def main():
    scene = sys.argv[1] if len(sys.argv) > 1 else "examples/interior.blend"
    out = sys.argv[2] if len(sys.argv) > 2 else "out/demo"
    ok, missing = sd15_available()
    if ok:
        model, extra = "sd15", []
        print("Using SD 1.5 from the Hugging Face cache.")
    else:
        model, extra = "tiny", ["--long-side", "256", "--steps", "8"]
        print(f"SD 1.5 weights are not in the Hugging Face cache ({missing} is missing, and this machine cannot "
              "download). Falling back to the offline 'tiny' model: its images are noise that prove the plumbing "
              "(passes -> backend -> images, manifest, contact sheet), not pictures.")
    archviz = os.path.join(os.path.dirname(sys.executable), "archviz")
    cmd = [archviz, "sweep", scene, "--styles", "modern,industrial", "--seeds", "0-3", "--model", model,
           "--out", out, *extra]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
