// grad_dump.c — one training forward and backward of a network on the CPU backend, written as safetensors for
// the PyTorch parity check (tests/torch_parity.py, tests/cli_torch_parity.sh):
//
//   grad_dump --list                              the registry's layer kinds, one per line
//   grad_dump --example KIND [--batch N] OUT      the kind's example network (tu_layer_example_text)
//   grad_dump --config FILE [--batch N] OUT       any config (its [net] shape and classes)
//
// OUT holds the parameters as initialised (seed 7, biases nudged off zero), "input" [N, C, H, W] (uniform in
// [-1, 1], seed 5), "labels" [N] (i mod classes, as floats), "loss" [1] (the mean training loss, label smoothing
// included), "grad.<tensor>" for every parameter tensor, the state tensors before and after ("after.<tensor>"),
// "mask.<layer>" (the keep mask each [dropout] drew), and the metadata config_ini (the effective config).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "config.h"
#include "layer.h"
#include "model.h"
#include "test_util.h"

static int usage(void) {
    fprintf(stderr, "usage: grad_dump --list | (--example KIND | --config FILE) [--batch N] OUT.safetensors\n");
    return 2;
}

static int dump(const net_config *cfg, int batch, const char *out) {
    backend be;
    model m;
    TRY(backend_create(&be, "cpu", &(backend_options){.threads = 1}));
    TRY(model_create(&m, &be, cfg, batch));
    TRY(model_init_params(&m, 7));
    rng r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < m.n_params; i++) m.params[i] += 0.1f * (rng_uniform(&r) - 0.5f);
    const size_t n_in = (size_t)batch * m.in_c * m.in_h * m.in_w;
    for (size_t i = 0; i < n_in; i++) ((float *)m.x)[i] = 2.0f * rng_uniform(&r) - 1.0f;
    float *labels = malloc((size_t)batch * sizeof(float));
    TRY_ALLOC(labels);
    for (int i = 0; i < batch; i++) m.labels[i] = i % m.classes, labels[i] = (float)(i % m.classes);
    float *params0 = malloc(m.n_params * sizeof(float));
    TRY_ALLOC(params0);
    memcpy(params0, m.params, m.n_params * sizeof(float));
    const int ns = model_state_tensor(&m, -1, NULL);
    float *state0 = malloc((m.n_state + 1) * sizeof(float));
    TRY_ALLOC(state0);
    if (m.n_state) memcpy(state0, m.state, m.n_state * sizeof(float));  // no state: m.state is NULL
    *m.loss_acc = 0;
    TRY(model_forward(&m, batch, 1));
    TRY(model_backward(&m, batch, NULL, NULL));
    float loss = (float)(*m.loss_acc / batch);

    const int nt = model_param_tensor(&m, -1, NULL, NULL, NULL, NULL, NULL);
    ckpt_tensor *t = calloc((size_t)(2 * nt + 2 * ns + m.n_layers + 3), sizeof *t);
    char(*names)[96] = calloc((size_t)(2 * nt + 2 * ns + m.n_layers), sizeof *names);
    float **masks = calloc((size_t)m.n_layers, sizeof *masks);
    TRY_ALLOC(masks);
    TRY_ALLOC(t);
    TRY_ALLOC(names);
    int k = 0;
    for (int i = 0; i < nt; i++) {
        const char *layer;
        int is_bias, ndim;
        size_t off;
        int64_t shape[4];
        model_param_tensor(&m, i, &layer, &is_bias, &off, &ndim, shape);
        for (int g = 0; g < 2; g++) {
            snprintf(names[k], sizeof names[k], "%s%s.%s", g ? "grad." : "", layer, is_bias ? "bias" : "weight");
            t[k] = (ckpt_tensor){.name = names[k], .data = (g ? m.grads : params0) + off, .ndim = ndim};
            memcpy(t[k].shape, shape, sizeof shape);
            k++;
        }
    }
    for (int i = 0; i < ns; i++) {
        model_state_info si;
        model_state_tensor(&m, i, &si);
        for (int a = 0; a < 2; a++) {
            snprintf(names[k], sizeof names[k], "%s%s.%s", a ? "after." : "", si.layer, si.suffix);
            t[k] = (ckpt_tensor){.name = names[k], .data = (a ? m.state : state0) + si.offset, .ndim = si.ndim};
            memcpy(t[k].shape, si.shape, sizeof si.shape);
            k++;
        }
    }
    // [dropout]: the keep mask this forward drew (y != 0), so that PyTorch drops the same units
    for (int i = 0; i < m.n_layers; i++) {
        const model_layer *l = &m.layers[i];
        if (l->type != LAYER_DROPOUT) continue;
        const size_t e = (size_t)batch * l->out_c * l->out_h * l->out_w;
        masks[i] = malloc(e * sizeof(float));
        TRY_ALLOC(masks[i]);
        for (size_t j = 0; j < e; j++) masks[i][j] = ((const float *)l->y)[j] != 0.0f;
        snprintf(names[k], sizeof names[k], "mask.%s", l->name);
        t[k] = l->out_spatial ? (ckpt_tensor){.name = names[k], .data = masks[i], .ndim = 4,
                                              .shape = {batch, l->out_c, l->out_h, l->out_w}}
                              : (ckpt_tensor){.name = names[k], .data = masks[i], .ndim = 2, .shape = {batch, l->out_c}};
        k++;
    }
    t[k++] = (ckpt_tensor){.name = "input", .data = m.x, .ndim = 4, .shape = {batch, m.in_c, m.in_h, m.in_w}};
    t[k++] = (ckpt_tensor){.name = "labels", .data = labels, .ndim = 1, .shape = {batch}};
    t[k++] = (ckpt_tensor){.name = "loss", .data = &loss, .ndim = 1, .shape = {1}};
    char *ini = config_text(cfg);
    TRY_ALLOC(ini);
    const ckpt_kv meta[] = {{"config_ini", ini}};
    int st = ckpt_save(out, t, k, meta, 1);
    for (int i = 0; i < m.n_layers; i++) free(masks[i]);
    free(masks), free(ini), free(t), free(names), free(labels), free(params0), free(state0);
    model_destroy(&m);
    backend_destroy(&be);
    return st;
}

int main(int argc, char **argv) {
    const char *example = NULL, *config = NULL, *out = NULL;
    int batch = 4;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list") == 0) {
            for (int t = 1; t < LAYER_KIND_COUNT; t++) printf("%s\n", layer_kind_of(t)->section);
            return 0;
        } else if (strcmp(argv[i], "--example") == 0 && i + 1 < argc) {
            example = argv[++i];
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
            batch = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && !out) {
            out = argv[i];
        } else {
            return usage();
        }
    }
    if (!out || !!example == !!config || batch < 1) return usage();
    static net_config cfg;
    int st;
    if (example) {
        const int type = layer_kind_find(example);
        if (!type) {
            fprintf(stderr, "grad_dump: no layer kind [%s]\n", example);
            return 2;
        }
        char text[4096];
        tu_layer_example_text(layer_kind_of(type)->example, batch, text, sizeof text);
        st = config_load_text(text, example, &cfg);
    } else {
        st = config_load(config, &cfg);
    }
    if (st == ST_OK) st = config_validate(&cfg);
    if (st == ST_OK) st = dump(&cfg, batch, out);
    if (st != ST_OK) {
        fprintf(stderr, "grad_dump: %s\n", err_msg());
        return 1;
    }
    return 0;
}
