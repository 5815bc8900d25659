# Row 12 of the seed tables: HRNet-w32 (UBody + COCO-WholeBody training) tested on UBody2D val.
# mmpose ships no config for this row: at HEAD the ubody config tests on COCO-WholeBody val. This
# restores the val/test block of mmpose commit b01849b9 (PR #2588), before b185fa3e replaced it:
# UBody2dDataset with no bbox_file (= GT person boxes) and use_area=False (OKS scale = w*h*0.53).
# Model, codec, pipeline and batch size are inherited unchanged from row 5's packaged config.
_base_ = ['mmpose::wholebody_2d_keypoint/topdown_heatmap/ubody2d/td-hm_hrnet-w32_8xb64-210e_ubody-256x192.py']

val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='UBody2dDataset',
        data_root='data/UBody/',
        data_mode='topdown',
        ann_file='annotations/val_annotations.json',
        data_prefix=dict(img='images/'),
        pipeline={{_base_.val_pipeline}},
        test_mode=True))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoWholeBodyMetric',
    use_area=False,
    ann_file='data/UBody/annotations/val_annotations.json')
test_evaluator = val_evaluator
