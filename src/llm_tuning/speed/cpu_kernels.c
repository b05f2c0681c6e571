/* The work of a decoder layer's training pass between its matrix products, one pass over the tensors per kernel, and
 * packed attention (speed/cpu_kernels.py says what each kernel replaces; cpu_kernels_build.py builds this for the CPU
 * it runs on). fp32, contiguous, single-threaded: in the split step each process computes with one thread. Plain C
 * loops that the compiler vectorises for this CPU. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* e^x: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' polynomial, times 2^n built in the exponent bits (as
 * 2^(n-1) * 2, so that e^x just below the float's largest still comes out finite, and above it infinite). Written
 * without library calls so that the loops around it vectorise. x is clamped to where 2^(n-1) stays a normal float:
 * below e^-86 the result stays e^-86, which every caller adds to 1 or to a sum holding a 1. A NaN passes the clamps
 * and comes out NaN through r. */
static inline float exp_f32(float x) {
    x = x < -86.0f ? -86.0f : x;
    x = x > 89.0f ? 89.0f : x;
    const float round = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    float n = (x * 1.44269504088896341f + round) - round;
    float r = x - n * 0.693359375f; /* ln2 in two parts (Cody and Waite), so that r is exact */
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 126) << 23;
    float half_scale;
    memcpy(&half_scale, &bits, sizeof half_scale);
    return p * half_scale * 2.0f;
}

/* y = silu(gate) * up, silu(x) = x / (1 + e^-x) as torch computes it */
void silu_product_forward(const float *restrict gate, const float *restrict up, float *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = gate[i] / (1.0f + exp_f32(-gate[i])) * up[i];
}

/* its gradients: grad_up = grad * silu(gate); grad_gate = grad * up * silu'(gate), where
 * silu'(x) = s (1 + x (1 - s)) with s = sigmoid(x), as torch's silu_backward */
void silu_product_backward(const float *restrict grad, const float *restrict gate, const float *restrict up,
                           float *restrict grad_gate, float *restrict grad_up, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + exp_f32(-gate[i]));
        grad_up[i] = grad[i] * (gate[i] * s);
        grad_gate[i] = grad[i] * up[i] * (s * (1.0f + gate[i] * (1.0f - s)));
    }
}

/* sum of a[j] * b[j] in 16 running sums, which the compiler keeps in vector registers (a single running sum
 * would be one long chain of dependent additions, and C may not reorder it) */
static float sum_of_products(const float *restrict a, const float *restrict b, ptrdiff_t n) {
    enum { LANES = 16 };
    float lanes[LANES] = {0};
    ptrdiff_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++)
            lanes[k] += a[j + k] * b[j + k];
    float total = 0.0f;
    for (int k = 0; k < LANES; k++)
        total += lanes[k];
    for (; j < n; j++)
        total += a[j] * b[j];
    return total;
}

/* y = weight * (x / sqrt(mean(x^2) + eps)) per row of `cols`, as LlamaRMSNorm; keeps 1 / sqrt(...) per row */
void rms_norm_forward(const float *restrict x, const float *restrict weight, float *restrict out,
                      float *restrict inv_rms, ptrdiff_t rows, ptrdiff_t cols, float eps) {
    for (ptrdiff_t row = 0; row < rows; row++) {
        const float *xr = x + row * cols;
        float *yr = out + row * cols;
        float inv = 1.0f / __builtin_sqrtf(sum_of_products(xr, xr, cols) / (float)cols + eps);
        inv_rms[row] = inv;
        for (ptrdiff_t j = 0; j < cols; j++)
            yr[j] = weight[j] * (xr[j] * inv);
    }
}

/* its gradients: with h = x * inv and g = grad * weight, grad_x = inv * (g - h * mean(g * h));
 * grad_weight (when not NULL) += sum over rows of grad * h */
void rms_norm_backward(const float *restrict grad, const float *restrict x, const float *restrict weight,
                       const float *restrict inv_rms, float *restrict grad_x, float *restrict grad_weight,
                       ptrdiff_t rows, ptrdiff_t cols) {
    for (ptrdiff_t row = 0; row < rows; row++) {
        const float *gr = grad + row * cols, *xr = x + row * cols;
        float *dx = grad_x + row * cols;
        float inv = inv_rms[row];
        for (ptrdiff_t j = 0; j < cols; j++)
            dx[j] = gr[j] * weight[j];
        float mean = sum_of_products(dx, xr, cols) * inv / (float)cols;
        for (ptrdiff_t j = 0; j < cols; j++)
            dx[j] = inv * (dx[j] - (xr[j] * inv) * mean);
        if (grad_weight)
            for (ptrdiff_t j = 0; j < cols; j++)
                grad_weight[j] += gr[j] * (xr[j] * inv);
    }
}

/* out = x * noise, noise = kept / keep (0 or 1 / keep), as lean LoRA dropout applies its 1-byte mask; the same two
 * roundings as torch's kept.float().div_(keep) and the product, so the result is bit for bit the same */
void dropout_apply(const float *restrict x, const uint8_t *restrict kept, float keep, float *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = x[i] * ((float)kept[i] / keep);
}

/* Causal attention within each sample of packed rows, forward and backward, for one thread: per sample, per key/value
 * head and per block of query rows, the products go to BLAS (numpy's OpenBLAS, 64-bit ints, handed over by
 * set_sgemm) and the softmax between them runs here, on the block's keys up to its last row only. q is
 * (rows, tokens, heads, dim) in memory, k and v (rows, tokens, kv_heads, dim), so one head's tokens are heads * dim
 * (kv_heads * dim) floats apart; query heads g * group .. g * group + group - 1 read key/value head g, and sit side by
 * side in memory. A block stacks them: its query rows of those heads, gathered token by token (row r of the stack is
 * token r / group, head r % group of the group), make one product against the key/value head, `group` times taller
 * than one head's, which BLAS multiplies faster. `samples` holds (row, start, length) triples. */
typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
static sgemm_fn sgemm;

void set_sgemm(void *function) { sgemm = (sgemm_fn)function; }

static float largest(const float *restrict a, ptrdiff_t n) {
    enum { LANES = 16 };
    float lanes[LANES];
    for (int k = 0; k < LANES; k++)
        lanes[k] = -3.0e38f;
    ptrdiff_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++)
            lanes[k] = a[j + k] > lanes[k] ? a[j + k] : lanes[k];
    float top = -3.0e38f;
    for (int k = 0; k < LANES; k++)
        top = lanes[k] > top ? lanes[k] : top;
    for (; j < n; j++)
        top = a[j] > top ? a[j] : top;
    return top;
}

static float sum(const float *restrict a, ptrdiff_t n) {
    enum { LANES = 16 };
    float lanes[LANES] = {0};
    ptrdiff_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++)
            lanes[k] += a[j + k];
    float total = 0.0f;
    for (int k = 0; k < LANES; k++)
        total += lanes[k];
    for (; j < n; j++)
        total += a[j];
    return total;
}

/* softmax(scale * a) over a's n values, in place (scale > 0); returns their log-sum-exp, log(sum(exp(scale * a))) */
static float softmax_in_place(float *restrict a, ptrdiff_t n, float scale) {
    float top = largest(a, n);
    for (ptrdiff_t j = 0; j < n; j++)
        a[j] = exp_f32((a[j] - top) * scale);
    float total = sum(a, n);
    float inverse = 1.0f / total;
    for (ptrdiff_t j = 0; j < n; j++)
        a[j] *= inverse;
    return top * scale + __builtin_logf(total);
}

/* A block's stack of query rows: tokens first .. first + tokens - 1 of a group's heads (span = group * dim floats side by
 * side per token, ld apart) copied into `stack`, and a stack copied back into that layout */
static void stack_rows(float *restrict stack, const float *restrict heads, int64_t ld, int64_t first, int64_t tokens,
                       int64_t span) {
    for (int64_t t = 0; t < tokens; t++)
        memcpy(stack + t * span, heads + (first + t) * ld, sizeof(float) * span);
}

static void unstack_rows(const float *restrict stack, float *restrict heads, int64_t ld, int64_t first, int64_t tokens,
                         int64_t span) {
    for (int64_t t = 0; t < tokens; t++)
        memcpy(heads + (first + t) * ld, stack + t * span, sizeof(float) * span);
}

/* P = softmax(scale * S) over keys 0 .. first + t of each stacked row (token t of the block), in place, zero beyond;
 * the row's log-sum-exp of scale * S in lse[head * tokens + first + t] for the backward pass */
static void causal_softmax(float *scores, int64_t stacked, int64_t group, int64_t first, int64_t width, float scale,
                           float *lse, int64_t tokens) {
    for (int64_t i = 0; i < stacked; i++) {
        float *row = scores + i * width;
        int64_t t = i / group, keys = first + t + 1;
        lse[(i % group) * tokens + first + t] = softmax_in_place(row, keys, scale);
        for (int64_t j = keys; j < width; j++)
            row[j] = 0.0f;
    }
}

/* P recomputed from S and the saved log-sum-exp, zero beyond each row's own position */
static void causal_probabilities(float *scores, int64_t stacked, int64_t group, int64_t first, int64_t width, float scale,
                                 const float *lse, int64_t tokens) {
    for (int64_t i = 0; i < stacked; i++) {
        float *row = scores + i * width;
        int64_t t = i / group, keys = first + t + 1;
        float row_lse = lse[(i % group) * tokens + first + t];
        for (int64_t j = 0; j < keys; j++)
            row[j] = exp_f32(row[j] * scale - row_lse);
        for (int64_t j = keys; j < width; j++)
            row[j] = 0.0f;
    }
}

/* where sample `s`'s head h starts in each tensor */
static int64_t head_offset(const int64_t *sample, int64_t tokens, int64_t heads, int64_t head, int64_t dim) {
    return ((sample[0] * tokens + sample[1]) * heads + head) * dim;
}

/* out (rows, tokens, heads, dim) = causal attention per sample; lse (rows, heads, tokens) kept for backward.
 * Returns 0, or -1 when memory for the scores cannot be had. */
int packed_attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, const int64_t *samples,
                             int64_t count, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t dim, int64_t block,
                             float scale) {
    int64_t group = heads / kv_heads, ldq = heads * dim, ldk = kv_heads * dim, span = group * dim;
    float *scores = malloc(sizeof(float) * block * group * (tokens + 2 * dim));
    if (!scores)
        return -1;
    float *stack = scores + block * group * tokens, *stack_out = stack + block * span;
    for (int64_t s = 0; s < count; s++) {
        const int64_t *sample = samples + 3 * s;
        int64_t length = sample[2];
        for (int64_t g = 0; g < kv_heads; g++) {
            const float *kh = k + head_offset(sample, tokens, kv_heads, g, dim);
            const float *vh = v + head_offset(sample, tokens, kv_heads, g, dim);
            const float *qh = q + head_offset(sample, tokens, heads, g * group, dim);
            float *oh = out + head_offset(sample, tokens, heads, g * group, dim);
            float *lh = lse + (sample[0] * heads + g * group) * tokens + sample[1];
            for (int64_t first = 0; first < length; first += block) {
                int64_t rows = length - first < block ? length - first : block, width = first + rows, stacked = rows * group;
                stack_rows(stack, qh, ldq, first, rows, span);
                sgemm(ROW_MAJOR, NO_TRANS, TRANS, stacked, width, dim, 1.0f, stack, dim, kh, ldk, 0.0f, scores, width);
                causal_softmax(scores, stacked, group, first, width, scale, lh, tokens);
                sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, stacked, dim, width, 1.0f, scores, width, vh, ldk, 0.0f, stack_out, dim);
                unstack_rows(stack_out, oh, ldq, first, rows, span);
            }
        }
    }
    free(scores);
    return 0;
}

/* The gradients of packed_attention_forward: dq in q's layout (overwritten), dk and dv in k's (accumulated into: zero
 * them first), from the output's gradient dout (out's layout) and what the forward kept. Returns 0, or -1 when
 * memory for the scores cannot be had. */
int packed_attention_backward(const float *q, const float *k, const float *v, const float *out, const float *lse,
                              const float *dout, float *dq, float *dk, float *dv, const int64_t *samples, int64_t count,
                              int64_t tokens, int64_t heads, int64_t kv_heads, int64_t dim, int64_t block, float scale) {
    int64_t group = heads / kv_heads, ldq = heads * dim, ldk = kv_heads * dim, span = group * dim;
    float *probabilities = malloc(sizeof(float) * group * (2 * block * tokens + tokens + 3 * block * dim));
    if (!probabilities)
        return -1;
    float *grad_scores = probabilities + block * group * tokens, *delta = grad_scores + block * group * tokens;
    float *stack = delta + group * tokens, *stack_dout = stack + block * span, *stack_dq = stack_dout + block * span;
    for (int64_t s = 0; s < count; s++) {
        const int64_t *sample = samples + 3 * s;
        int64_t length = sample[2];
        for (int64_t g = 0; g < kv_heads; g++) {
            int64_t at_q = head_offset(sample, tokens, heads, g * group, dim);
            int64_t at_k = head_offset(sample, tokens, kv_heads, g, dim);
            const float *qh = q + at_q, *kh = k + at_k, *vh = v + at_k, *oh = out + at_q, *doh = dout + at_q;
            const float *lh = lse + (sample[0] * heads + g * group) * tokens + sample[1];
            for (int64_t i = 0; i < length * group; i++) { /* rowsum(dout * out) per stacked row: the softmax's backward */
                int64_t at = (i / group) * ldq + (i % group) * dim;
                delta[i] = sum_of_products(doh + at, oh + at, dim);
            }
            for (int64_t first = 0; first < length; first += block) {
                int64_t rows = length - first < block ? length - first : block, width = first + rows, stacked = rows * group;
                stack_rows(stack, qh, ldq, first, rows, span);
                stack_rows(stack_dout, doh, ldq, first, rows, span);
                sgemm(ROW_MAJOR, NO_TRANS, TRANS, stacked, width, dim, 1.0f, stack, dim, kh, ldk, 0.0f, probabilities, width);
                causal_probabilities(probabilities, stacked, group, first, width, scale, lh, tokens);
                /* dv += P^T dout; dP = dout V^T */
                sgemm(ROW_MAJOR, TRANS, NO_TRANS, width, dim, stacked, 1.0f, probabilities, width, stack_dout, dim, 1.0f,
                      dv + at_k, ldk);
                sgemm(ROW_MAJOR, NO_TRANS, TRANS, stacked, width, dim, 1.0f, stack_dout, dim, vh, ldk, 0.0f, grad_scores,
                      width);
                for (int64_t i = 0; i < stacked; i++) { /* dS = P * (dP - delta) * scale */
                    float *gs = grad_scores + i * width;
                    const float *p = probabilities + i * width;
                    float d = delta[first * group + i];
                    for (int64_t j = 0; j < width; j++)
                        gs[j] = p[j] * (gs[j] - d) * scale;
                }
                /* dq = dS K; dk += dS^T Q */
                sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, stacked, dim, width, 1.0f, grad_scores, width, kh, ldk, 0.0f, stack_dq,
                      dim);
                unstack_rows(stack_dq, dq + at_q, ldq, first, rows, span);
                sgemm(ROW_MAJOR, TRANS, NO_TRANS, width, dim, stacked, 1.0f, grad_scores, width, stack, dim, 1.0f, dk + at_k,
                      ldk);
            }
        }
    }
    free(probabilities);
    return 0;
}

/* The summed cross-entropy's gradient with respect to the logits, in place, per row of `cols` logits: softmax(row),
 * less one at the row's target; returns the sum over rows of -log softmax(row)[target]. What loss.py computes with
 * torch's log_softmax, exp and gather, in one pass over the logits fewer, and one exp per logit instead of two. */
double cross_entropy_gradient(float *restrict logits, const int64_t *restrict targets, ptrdiff_t rows, ptrdiff_t cols) {
    double total = 0.0;
    for (ptrdiff_t r = 0; r < rows; r++) {
        float *row = logits + r * cols;
        float target = row[targets[r]];
        total += (double)(softmax_in_place(row, cols, 1.0f) - target);
        row[targets[r]] -= 1.0f;
    }
    return total;
}
