#!/usr/bin/env bash
# multispectral foundry case: the four real csmask U-Nets (+3 MTCNN out-of-domain members) as the zoo,
# the 6-band L2A U-Net as the prompt, generated vs scratch / prompt / zoo average on csmask.
# Usage: MTCNN=.../facenet_pytorch/data docs/examples/csmask_foundry.sh [OUT]  (about 20 min on 2 CPUs)
set -euo pipefail
cd "$(dirname "$0")/../.."
G=.venv/bin/geosane
D=$(.venv/bin/python -c "import ukis_csmask, os; print(os.path.dirname(ukis_csmask.__file__))")
R=${1:-runs/csmask-foundry}
M=${MTCNN:?set MTCNN to the facenet_pytorch/data folder (pip install --no-deps facenet-pytorch)}
date
$G zoo add $D/model_6b_l2a.onnx $D/model_6b_l1c.onnx $D/model_4b_l2a.onnx $D/model_4b_l1c.onnx --zoo $R/zoo --parity-data ../shared/data/csmask
$G zoo add $M/pnet.pt $M/rnet.pt $M/onet.pt --zoo $R/zoo --task face-detection --modality rgb --license MIT
date
$G tokenize --zoo $R/zoo --out $R/store
date
$G train small data.store=$R/store train.out=$R/ae train.max_steps=600
date
$G generate --ae $R/ae --prompt zoo:$R/zoo#model_6b_l2a --store $R/store --anchors 1 --num-candidates 3 --top-k 1 --decode residual --out $R/gen
date
$G compare compare_csmask_unet task.reset_head=false train.lr=0.0001 'inits=[scratch,prompt,zoo_average,generated]' \
    'zoo.members=[model_6b_l2a,model_6b_l1c]' generated.top_k=1 --zoo $R/zoo --generated $R/gen \
    --prompt zoo:$R/zoo#model_6b_l2a --data ../shared/data/csmask --out $R/compare
