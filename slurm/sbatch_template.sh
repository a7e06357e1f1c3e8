#!/bin/bash
# One xbench cell as a plain SLURM batch job, for clusters without Hydra's submitit launcher.
#
#   sbatch slurm/sbatch_template.sh experiment=NAME seed=1          # args go to xbench.train
#   sbatch --partition=gpu --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 \
#       slurm/sbatch_template.sh experiment=NAME
#
# Flags given to sbatch override the #SBATCH lines below, so copy this file only when a site
# needs different defaults. A line starting '##SBATCH' is switched off; remove one '#' to use it.
# sbatch reads #SBATCH lines only up to the first command, and not inline comments, so each
# option's comment sits on the line above it.
#
# Queue to run in.
#SBATCH --partition=debug
# Account to charge, where the site requires one.
##SBATCH --account=ACCOUNT
#SBATCH --job-name=xbench
# Nodes; torch.distributed spans all of them (MASTER_ADDR is the first).
#SBATCH --nodes=1
# One task per GPU: every task is one torch.distributed rank (RANK = SLURM_PROCID).
#SBATCH --ntasks-per-node=1
# GPUs per node; keep equal to --ntasks-per-node.
##SBATCH --gpus-per-node=1
# CPUs per rank: dataloader workers + 1.
#SBATCH --cpus-per-task=2
# Memory per node (not per task).
#SBATCH --mem=8G
# Wall-time limit, [days-]hours:minutes:seconds. The cell must checkpoint well within it.
#SBATCH --time=04:00:00
# Requeue instead of failing on node failure or preemption (needs JobRequeue or this flag).
#SBATCH --requeue
# 'B:' sends SIGUSR2 to this batch shell (not to the ranks) 120 s before the limit; the trap below
# requeues the job, which then resumes from the run dir's last checkpoint. SLURM may send it up to
# a minute earlier than asked.
#SBATCH --signal=B:USR2@120
# %x = job name, %j = job id. Append: a requeued job keeps the log of its earlier attempts.
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

# Knobs from the submitting environment (sbatch exports it by default):
#   PYTHON        interpreter with xbench installed (default: python on PATH)
#   XBENCH_ENTRY  module to run with 'python -m' (default xbench.train; xbench.eval works alike)
#   RUN_DIR       run directory (default runs/slurm-<job id>)
PYTHON=${PYTHON:-python}
XBENCH_ENTRY=${XBENCH_ENTRY:-xbench.train}
cd "${SLURM_SUBMIT_DIR:-.}"
# The job id survives requeues, so a requeued attempt finds the same run dir and resumes from it.
# A fixed dir also keeps all ranks in one dir: Hydra's default is a timestamp each rank computes
# for itself, seconds apart.
RUN_DIR=${RUN_DIR:-runs/slurm-${SLURM_JOB_ID}}

# torch.distributed's env:// rendezvous, derived from SLURM. MASTER_ADDR: the first node of the
# allocation. MASTER_PORT: fixed per job (same on every node, differs between jobs that share a
# node), 20000-39999. WORLD_SIZE is job-wide; RANK/LOCAL_RANK are set per task inside srun.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
WORLD_SIZE=$SLURM_NTASKS
export MASTER_ADDR MASTER_PORT WORLD_SIZE

echo "xbench: job $SLURM_JOB_ID attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on $SLURM_JOB_NODELIST:" \
    "$WORLD_SIZE rank(s), master $MASTER_ADDR:$MASTER_PORT, run dir $RUN_DIR"

# Near the limit (or on preemption with a USR2 signal), requeue ourselves; SLURM then stops the
# ranks (SIGTERM, SIGKILL after KillWait) and reruns this script with the same job id.
requeue() {
    echo "xbench: SIGUSR2 at $(date -Is): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap requeue USR2

# srun starts --ntasks copies; each maps its SLURM ids onto torch's names before exec'ing Python.
# It runs in the background because bash defers traps until a foreground command returns, and
# 'wait' returns as soon as a trapped signal arrives.
# shellcheck disable=SC2016  # the $SLURM_* are for the per-task bash to expand, not this one
srun --kill-on-bad-exit=1 bash -c \
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID; exec "$0" -m "$@"' \
    "$PYTHON" "$XBENCH_ENTRY" "hydra.run.dir=$RUN_DIR" "$@" &
srun_pid=$!
wait "$srun_pid"
