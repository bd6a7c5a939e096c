"""Every number, flag, code name, bold term, citation, command line and clause of the old README is in the new
README or docs/*.md (moved, not lost). Prose clauses that were reworded are listed for a person to read.

Usage (from the repository root): python tools/readme_moved.py [COMMIT]   (default: the README before issue 17)
"""
import glob
import re
import subprocess
import sys

commit = sys.argv[1] if len(sys.argv) > 1 else "9f92a2a"
old = subprocess.run(["git", "show", f"{commit}:README.md"], capture_output=True, text=True, check=True).stdout
new = open("README.md").read() + "\n".join(open(p).read() for p in sorted(glob.glob("docs/*.md")))
def norm(s):
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", s)          # links -> their text
    return re.sub(r"\s+", " ", s).strip()
newn = norm(new)
fences = re.findall(r"```[a-z]*\n(.*?)```", old, re.S)
prose = re.sub(r"```[a-z]*\n.*?```", "", old, flags=re.S)
kinds = {
  "number": set(re.findall(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e-?\d+)?%?", old)),
  "flag": set(re.findall(r"--[a-z][a-z-]*", old)),
  "code span": set(re.findall(r"`([^`\n]+)`", prose)),
  "bold": {b.rstrip(".") for b in re.findall(r"\*\*([^*]+)\*\*", old)},
  "citation": set(re.findall(r"[A-Z][a-zA-Z-]+ et al\.(?: \(?\d{4}\)?)?", old)),
  "code-block line": {l.split("#")[0].strip() for f in fences for l in f.splitlines() if l.strip()} - {""},
}
bad = 0
for kind, items in kinds.items():
    miss = sorted(i for i in items if norm(i) not in newn)
    print(f"{kind}: {len(items)} in old README, missing {len(miss)}: {miss}")
    bad += len(miss)
clauses = [c.strip() for c in re.split(r"(?<=[.;:])\s+|\n\s*[-|]\s|\|", norm(re.sub(r"^#.*$", "", prose, flags=re.M))) if len(c.strip()) >= 25]
miss = [c for c in clauses if c not in newn]
print(f"prose clauses (>= 25 chars): {len(clauses)}, not found verbatim: {len(miss)}")
for c in miss: print("   ", c)
sys.exit(1 if bad else 0)
