// train_opts.h — what a caller hands the trainer besides the configuration (the command line's run options)
// and what it gets back; the stop flag main's signal handlers set.
#pragma once
#include <signal.h>
#include <stddef.h>

typedef struct train_opts {
    const char *metrics_path;   // JSON Lines, one object per epoch (rank 0); NULL: none
    const char *save_path;      // checkpoint written after every epoch and when stopped; NULL: none
    const char *resume_path;    // checkpoint to continue from; NULL: start fresh
    const char *baseline_path;  // metrics of an np 1 run, for measured scaling efficiency; NULL: estimate
    const char *trace_dir;      // timeline: every rank writes <dir>/trace_rank<R>.json (src/trace.h); NULL: none
    const char *tensorboard_dir;  // rank 0 writes TensorBoard event files there (src/tensorboard.h); NULL: none
    long long max_steps;        // stop after this many global steps in total (0: run all epochs)
    const char *init_from;      // --init-from: model weights only (no optimizer state, position or schedule)
    const char *init_exclude;   // --init-exclude: comma-separated layer or tensor names left at their init
    int save_every;             // --save-every N: also keep <stem>-eN.safetensors every N epochs (0: off)
    int keep_best;              // --keep-best: also keep <stem>-best.safetensors, the best test accuracy so far
    // Using a trained model instead of training (docs/outputs.md, "Using a trained model"); NULL: train.
    const char *eval_path;      // --eval CKPT: test loss, accuracy, per-class accuracy, confusion matrix
    const char *predict_path;   // --predict CKPT: class probabilities of every image of images_path
    const char *images_path;    // --images PATH: IDX (raw or gzip), CIFAR-10 binary, JPEG/PNG, a folder, a list
#define TRAIN_IMAGES_MAX 256
    const char *images_paths[TRAIN_IMAGES_MAX];  // every --images (images_path is the first)
    int n_images;
    const char *out_path;       // --out FILE.csv (NULL: stdout)
    int keep_params;            // copy the final parameters to result->params (tests)
    int progress;               // progress bar on rank 0 (main sets it when stdout is a TTY)
    double log_every_s;         // without the bar (a log file): a progress line every this many seconds (0: none)
    int verbose;                // the step-time breakdown under each epoch line
    const struct test_hooks *hooks;  // test-only fault hooks and the CPU capture emulation (src/test_hooks.h);
                                     // NULL: all off. main fills it from the DDP_TEST_* environment.
} train_opts;

typedef struct train_result {
    long long steps;            // global steps completed
    int epochs_done;
    double train_loss, test_loss, test_acc;
    double train_s;             // wall time of all training steps
    int used;                   // the run evaluated (--eval) or predicted (--predict) instead of training
    int nothing_left;           // resumed at or past net.epochs / --steps: nothing was trained
    int epoch;                  // with nothing_left: the checkpoint's position (epochs done)
    float *params;              // with keep_params: host copy in the model's flat (reverse-layer) layout
    size_t n_params;
} train_result;

// Set by main's SIGINT/SIGTERM handler; the loop stops at the next step boundary agreed by all ranks.
extern volatile sig_atomic_t g_stop_requested;

void train_result_free(train_result *r);
