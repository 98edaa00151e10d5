// config.h — the run configuration: an INI file (libinih), Darknet-like.
//
//   [net]       hyper-parameters and run settings
//   [data]      data set format and paths
//   [parallel]  data-parallel settings (comm backend, buckets, overlap, scaling mode)
//   then one section per layer, in order, of the kinds in the layer registry (src/layers/kinds.def): [conv]
//   [maxpool] [dense] [softmax] [flatten] (optional: a [dense] after a spatial layer flattens its input) ...
//
// A value in double quotes is decoded (escapes \\ \" \n \t \xHH) and may go on over following lines that
// start with blanks until its closing quote; config_print writes so every string the INI rules would alter (a
// ';', '#', blanks at an end, control bytes, a line over the reader's limit), so any string value reads back.
//
// Every key has a documented default (docs/config.md). Unknown sections or keys, missing required
// keys, bad values and impossible shapes are ST_INPUT errors naming file, section (with its line) and key.
#pragma once
#include <stdint.h>
#include <stdio.h>

// A path field: any Linux path (PATH_MAX 4096 with its NUL) and a suffix, as in cfg->path's
// "<checkpoint> (its stored config)". Sized fields of net_config and stack buffers use it: keep an eye on both.
#define CFG_PATH_MAX (4096 + 64)
#define CFG_MAX_LAYERS 512
#define CFG_NAME_MAX 32

#define CFG_MAX_REFS 4

// One value per kind in the registry (src/layers/kinds.def), from 1.
enum layer_type {
    LAYER_NONE = 0,
#define LAYER_KIND(E, s) LAYER_##E,
#include "layers/kinds.def"
#undef LAYER_KIND
    LAYER_KIND_COUNT
};
enum optimizer_kind { OPT_ADAM = 1, OPT_SGD, OPT_ADAMW };
enum schedule_kind { SCHED_CONSTANT = 1, SCHED_STEP, SCHED_COSINE, SCHED_ONECYCLE };
#define CFG_LR_STEPS_MAX 32
#define CFG_NORM_CHANNELS_MAX 16    // data.normalize: channels with a mean and std (GATHER_AUG_CHANNELS_MAX)
#define CFG_NORM_TEXT 512
enum data_format { DATA_IDX = 1, DATA_CIFAR10, DATA_SYNTHETIC, DATA_FOLDER, DATA_LIST, DATA_SHARDS };
// Streamed formats: decoded by the loader's workers batch by batch (src/loader.h), never held whole.
#define CFG_STREAMED(cfg) ((cfg)->data_format >= DATA_FOLDER)
enum normalize_kind { NORM_OFF = 0, NORM_ON = 1, NORM_IMAGENET = 2 };
enum scaling_mode { SCALING_WEAK = 1, SCALING_STRONG };
enum lr_scaling { LR_SCALING_NONE = 0, LR_SCALING_LINEAR };
enum compress_mode { COMPRESS_NONE = 0, COMPRESS_BF16, COMPRESS_FP16, COMPRESS_POWERSGD };
enum hierarchy_mode { HIERARCHY_FLAT = 0, HIERARCHY_NODE, HIERARCHY_AUTO };
enum precision_kind { PREC_FP32 = 0, PREC_TF32, PREC_BF16, PREC_FP16 };  // net.precision (docs/precision.md)
enum layout_kind { LAYOUT_NCHW = 0, LAYOUT_NHWC };                      // net.layout
enum act_storage_kind { ACT_STORE_AUTO = 0, ACT_STORE_FP32, ACT_STORE_COMPUTE };  // net.act_storage

typedef struct layer_cfg {
    int type;                   // enum layer_type
    char name[CFG_NAME_MAX];    // from name=, else default: conv1, conv2, pool1, dense1, ... (per-kind counter)
    int line;                   // line of the section header in the file (for messages)
    // The fields a kind's keys fill (src/layers/<kind>.c lists its keys, defaults and ranges); shared by name
    // across kinds (size, stride, activation ...).
    int filters, size, stride, pad, units;
    int groups, dilation;       // conv
    int act;                    // ACT_* (backend.h)
    int bias;                   // conv, dense: 1 = with a bias
    int sync;                   // batchnorm: statistics over all ranks
    double eps, momentum;       // batchnorm
    double rate;                // dropout
    int refs[CFG_MAX_REFS];     // from= / layers=: as written (negative = relative)
    int n_refs;
} layer_cfg;

typedef struct net_config {
    char path[CFG_PATH_MAX];    // the file it came from (for messages)

    // [net]
    int batch;                  // per-rank batch in weak scaling, global batch in strong scaling (default 64)
    int epochs;                 // default 5
    int optimizer;              // adam (default) | sgd | adamw
    double lr;                  // default 1e-3 (the peak of a schedule)
    int schedule;               // constant (default) | step | cosine | onecycle (optim.h: optim_lr_at)
    double warmup_epochs;       // default 0: linear warmup to the peak over this many epochs (fractional)
    double min_lr;              // default 0: where cosine and onecycle end
    char lr_steps[256];         // step: epochs at which lr is multiplied by gamma, "30,60" (key `steps`)
    double gamma;               // step: default 0.1
    double beta1, beta2, eps;   // Adam, Keras defaults 0.9, 0.999, 1e-7
    double momentum;            // SGD, default 0.9
    int nesterov;               // SGD: Nesterov momentum (default 0)
    double weight_decay;        // default 0 (adam, sgd: L2 added to the gradient; adamw: decoupled)
    int accum_steps;            // micro-batches of `batch` per optimizer step, all-reduced once (default 1)
    double label_smoothing;     // softmax cross-entropy target (1 - s) onehot + s / classes, training only (default 0)
    double clip_grad_norm;      // > 0: clip the averaged gradients to this global L2 norm (default 0: off)
    char no_decay[256];         // parameters without weight decay: "bias", layer names, comma-separated
    uint64_t seed;              // default 42
    int channels, height, width;  // input shape (required; must match the data)
    int classes;                // default 10
    char backend[16];           // cpu (default) | cuda
    int threads;                // CPU threads per rank, 0 = cores / local ranks (default 0)
    int tf32;                   // CUDA: allow TF32 in cuBLAS/cuDNN (default 0)
    int precision;              // PREC_FP32 (default) | _TF32 | _BF16 | _FP16: convolutions and GEMMs (docs/precision.md)
    int layout;                 // LAYOUT_NCHW (default) | _NHWC: the GPU's activation layout (the CPU computes NCHW)
    int act_storage;            // ACT_STORE_AUTO (default: the compute type on a GPU, fp32 on the CPU) | _FP32 | _COMPUTE:
                                // the buffers activations are held in under precision bf16/fp16 (docs/precision.md)
    double loss_scale_init;     // fp16: the dynamic loss scale's first value (default 65536 = 2^16)
    int loss_scale_growth_interval;  // fp16: finite steps in a row before the scale doubles (default 2000)
    int deterministic;          // CUDA: deterministic cuDNN algorithms, bit-identical runs (default 0; cpu: no effect)
    int cuda_graph;             // CUDA: capture the step in a CUDA Graph (default 1)
    int eval_batch;             // default 1000

    // [data]
    int data_format;            // idx (default) | cifar10 | synthetic | folder | list | shards
    char train_images[CFG_PATH_MAX], train_labels[CFG_PATH_MAX];  // idx
    char test_images[CFG_PATH_MAX], test_labels[CFG_PATH_MAX];    // idx
    char cifar_dir[CFG_PATH_MAX];  // cifar10: directory with data_batch_{1..5}.bin and test_batch.bin
    int train_limit, test_limit;   // use only the first N samples (0 = all), for quick runs and tests
    // folder: torchvision ImageFolder trees (root/<class>/**/<image>); list: `path label` lines (src/image_set.h)
    char train_dir[CFG_PATH_MAX], val_dir[CFG_PATH_MAX], test_dir[CFG_PATH_MAX];
    char train_list[CFG_PATH_MAX], val_list[CFG_PATH_MAX], test_list[CFG_PATH_MAX], names[CFG_PATH_MAX];
    // shards: WebDataset-style tar shards, brace patterns (train-{000000..000127}.tar); names as for list
    char train_shards[CFG_PATH_MAX], val_shards[CFG_PATH_MAX], test_shards[CFG_PATH_MAX];
    int shuffle_buffer;         // shards: 0 = the global permutation (random access, as folder); N = shards split
                                // over ranks, read in order through a shuffle buffer of N samples (default 0)
    double val_fraction;        // held out of the training set for validation (default 0; or val_dir/val_list)
    int workers;                // decode threads per rank (default 0: a share of the rank's cores, docs/data.md)
    int prefetch;               // batches decoded ahead of the step (default 2)
    int max_pixels;             // larger images are bad input (default 89478485, PIL's bomb limit)
    int skip_bad, max_bad;      // replace unreadable images (default 0), but at most max_bad of them (default 100)
    int resize;                 // evaluation: shorter side to this, then center crop to height x width (default 0)
    int random_resized_crop;    // training: torchvision RandomResizedCrop to height x width (default 0)
    char rrc_scale[64], rrc_ratio[64];  // its ranges (default 0.08,1 and 0.75,1.3333333333333333)
    int dct_scaling;            // JPEG: decode at 1/2..1/8 when much larger than needed (default 1)
    // augmentation (src/augment.h): crop and flip on training batches only, normalisation everywhere
    int crop_pad;               // random crop after zero padding by this many pixels (default 0: off)
    int flip;                   // 1: random horizontal flip, p = 1/2 (default 0)
    int normalize;              // 1: (x - mean) / std per channel; imagenet: torchvision's preset (default 0)
    char mean[CFG_NORM_TEXT], std[CFG_NORM_TEXT];  // one per channel, pixel/255 units, comma-separated; with
                                // normalize=1 and none given, the training set's (written here at start-up)

    // [parallel]
    char comm[16];              // mpi (default) | nccl
    int bucket_kb;              // gradient bucket size in KiB (default 32)
    int overlap;                // 1 (default): launch buckets during backward; 0: after backward; 2: alternate
                                // (0 on even steps, 1 on odd ones; a measurement: metrics ab_off / ab_on)
    int compress;               // gradients on the wire: COMPRESS_NONE (fp32, default) | _BF16 | _FP16 | _POWERSGD
    int powersgd_rank;          // PowerSGD: rank of the low-rank approximation (default 1)
    int powersgd_start_step;    // PowerSGD: optimizer steps all-reduced uncompressed first (default 1000)
    int hierarchy;              // HIERARCHY_FLAT (default) | _NODE (reduce within a node, leaders across) | _AUTO
    int force_allreduce;        // 1: run the bucketed all-reduce also at one rank (checks the comm path on 1 GPU)
    int scaling;                // weak (default) | strong
    int lr_scaling;             // none (default) | linear (the schedule's peak lr *= world size)
    double comm_timeout_s;      // collective watchdog (default 300)
    double save_timeout_s;      // rank 0 writing a checkpoint: the others wait this long at most (default 600)

    int n_layers;
    layer_cfg layers[CFG_MAX_LAYERS];
} net_config;

// net.steps parsed: the epochs at which a step schedule multiplies lr by gamma (increasing; *n = 0 if none).
int config_lr_steps(const net_config *cfg, int *epochs /* CFG_LR_STEPS_MAX */, int *n);

// What net.no_decay (list: comma-separated 'bias', 'batchnorm' and layer names) says about one layer: *whole = 1
// (weights and bias undecayed) when it names the layer, or says 'batchnorm' and the layer is a [batchnorm], as
// PyTorch recipes leave norm layers undecayed; *bias = 1 when it says 'bias'. config_validate checks the names.
void config_no_decay_layer(const char *list, const char *layer_name, int is_batchnorm, int *whole, int *bias);

// data.mean and data.std parsed (*n = 0 when not given): each has one value per channel, every std > 0.
int config_norm_values(const net_config *cfg, double *mean /* CFG_NORM_CHANNELS_MAX */,
                       double *std /* CFG_NORM_CHANNELS_MAX */, int *n);

// data.rrc_scale / data.rrc_ratio parsed: two numbers lo <= hi (scale within (0, 1], ratio > 0).
int config_rrc_ranges(const net_config *cfg, double scale[2], double ratio[2]);

// Defaults for every [net]/[data]/[parallel] key (no layers).
void config_defaults(net_config *cfg);
// Parse path into cfg (defaults first). Does not validate shapes (call config_validate after --set): required keys too, so --set may supply them.
int config_load(const char *path, net_config *cfg);
// The same from INI text held in memory (a checkpoint's stored configuration); origin names it in messages
// ("ckpt.safetensors (its stored config)") and becomes cfg->path.
int config_load_text(const char *text, const char *origin, net_config *cfg);
// Apply "section.key=value" (section: net, data, parallel, or a layer's name such as conv1).
int config_set(net_config *cfg, const char *assignment);
// Check values and propagate shapes through the layers; names the layer and key at fault.
int config_validate(const net_config *cfg);
// Print the effective configuration as INI (for logs and for --print-config).
void config_print(const net_config *cfg, FILE *f);
// config_print's text in memory (malloc'd; NULL when out of memory): what a checkpoint stores and ranks compare.
char *config_text(const net_config *cfg);

// The data files the config names: IDX train images, labels, test images, labels (4); CIFAR-10
// cifar_dir/data_batch_1..5.bin, test_batch.bin (6). Returns how many were written to paths.
#define CFG_DATA_FILES_MAX 6
int config_data_paths(const net_config *cfg, char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32]);
