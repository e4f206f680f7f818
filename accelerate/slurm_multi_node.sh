#!/bin/bash
# SLURM: one task a node, each running accelerate launch with its own machine rank. Submit with
#   sbatch accelerate/slurm_multi_node.sh data=kornli loss=mnrl trainer.batch_size=64
# Every node must see the repository and the run dir (a shared filesystem); only the main process
# (node 0, rank 0) writes there. A requeued or restarted job resumes the same run dir.
#SBATCH --job-name=embed-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RUN_DIR=${RUN_DIR:-outputs/slurm-$SLURM_JOB_ID}
# A requeued job finds its checkpoints and continues; a fresh one starts.
RESUME=$([ -d "$RUN_DIR/checkpoints" ] && echo "trainer.resume=latest" || true)
# A peer that dies or stops answering ends the others within this many seconds (docs/distributed.md, "Many machines").
export EMBED_DIST_TIMEOUT_S=${EMBED_DIST_TIMEOUT_S:-600}

srun --kill-on-bad-exit=1 bash -c "accelerate launch --config_file accelerate/multi_node.yaml \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_NODE --main_process_port 29500 \
  -m train hydra.run.dir=$RUN_DIR $RESUME $*"
