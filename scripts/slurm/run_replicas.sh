# Body shared by the train_*.sbatch templates (sourced from them): one training process per GPU, started by
# srun on every node of the job; they find each other through a TCP rendezvous on the job's first node.
#
# Learning rate: the cfg is used as it is. Its `batch` is the number of images of one iteration over ALL
# GPUs together; each of the N processes takes batch/N of them, all gradients are summed by one all-reduce
# and every process takes the same SGD step. So the run follows exactly the trajectory of one GPU with the
# same cfg: keep learning_rate, burn_in, steps and max_batches as they are. The reference's rule for N GPUs
# (learning_rate/N, burn_in*N) was made for its own scheme (N independent copies with weights averaged every
# 4 iterations) and does not apply here; see README, "Many GPUs and machines", for how to translate a cfg
# edited by that rule, and for larger batches. batch and subdivisions must both be multiples of N.
DATA=${1:?usage: sbatch $0 DATA CFG [WEIGHTS]}
CFG=${2:?usage: sbatch $0 DATA CFG [WEIGHTS]}
WEIGHTS=${3:-}
PYTHON=${PYTHON:-python3}
SRUN=${SRUN:-srun}

# The checkpoint to resume from: WEIGHTS if given, else <backup>/<prefix>/<cfg base>.backup if present.
RESUME=$("$PYTHON" - "$CFG" "$DATA" "$WEIGHTS" <<'PY'
import os, sys
cfg, data, weights = sys.argv[1:4]
if weights:
    print(weights)
else:
    opts = {}
    for line in open(data):
        line = "".join(line.split())
        if line and line[0] not in "#;" and "=" in line:
            k, v = line.split("=", 1); opts.setdefault(k, v)
    backup = os.path.join(opts.get("backup", "backup"), opts.get("prefix", ""),
                          os.path.splitext(os.path.basename(cfg))[0] + ".backup")
    print(backup if os.path.isfile(backup) else "")
PY
)

# Rendezvous: rank 0 runs on the job's first node and listens on a port derived from the job id.
HOST=$( (scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null || true) | head -n1)
HOST=${HOST:-$(hostname)}
PORT=$((20000 + ${SLURM_JOB_ID:-$$} % 20000))
# Each process trains on cuda:<its local rank> (the tasks of a node see all of its GPUs, so NCCL can use
# NVLink between them); a rank that dies or hangs stops the others within PYDARKNET_DIST_TIMEOUT seconds.
export PYDARKNET_DIST_URL=tcp://$HOST:$PORT PYDARKNET_DEVICE=cuda
echo "cfg: $CFG (unchanged); rendezvous $PYDARKNET_DIST_URL; start from: ${RESUME:-scratch}"

# srun in the background so that this shell can pass Slurm's SIGTERM on (srun forwards it to every task:
# the ranks agree to stop, rank 0 saves the .backup once, all exit 0). --kill-on-bad-exit ends the step
# when a rank fails.
$SRUN --kill-on-bad-exit=1 "$PYTHON" -m pydarknet train "$DATA" "$CFG" ${RESUME:+"$RESUME"} &
STEP=$!
TERMINATED=
trap 'TERMINATED=1; echo "SIGTERM: asking every rank to save and stop"; kill -TERM $STEP' TERM
status=0
wait $STEP || status=$?
# A forwarded signal interrupts the first wait: wait again for the ranks to save and exit, and take the status.
if [ -n "$TERMINATED" ]; then status=0; wait $STEP || status=$?; fi
exit $status
