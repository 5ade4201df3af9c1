"""``make demo``: sweep the example interior in 2 styles x 4 seeds and print the contact sheet.

Uses real SD 1.5 (base + depth and lineart ControlNets) when those weights are complete
snapshots in the Hugging Face cache (``archviz models download sd15``). Otherwise it says so and uses the offline ``tiny`` model, whose images
are noise that prove the plumbing end to end.
"""

import os
import subprocess
import sys

def sd15_available():
    """(True, "") when every SD 1.5 model a default sweep loads is a complete snapshot in the
    Hugging Face cache (for the precision the backend runs here), else (False, first missing)."""
    from archviz_controlnet.backend.models import hub
    from archviz_controlnet.backend.models import registry as M
    from archviz_controlnet.backend.cli.models import fp16_for

    fp16 = fp16_for("auto")
    for repo, components, label in M.CATALOG["sd15"]:
        if not hub.cached_state(repo, components, fp16, label).complete:
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
        print(f"SD 1.5 weights are not in the Hugging Face cache ({missing} is missing or incomplete; "
              "`archviz models download sd15` fetches them). Falling back to the offline 'tiny' model: its images are noise that prove the plumbing "
              "(passes -> backend -> images, manifest, contact sheet), not pictures.")
    archviz = os.path.join(os.path.dirname(sys.executable), "archviz")
    cmd = [archviz, "sweep", scene, "--styles", "modern,industrial", "--seeds", "0-3", "--model", model,
           "--out", out, *extra]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
