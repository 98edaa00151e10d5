// cuda_common.h — error checks shared by every CUDA source (.cu, compiled as C++): one generic macro from
// which the CUDA, cuBLAS, cuDNN and NCCL checks derive, so every failure reads the same way:
//   "rank R (host): file:line: <the call> failed: <library's error string>"
// and becomes a status (ERR) that the caller relays with TRY. Library code never prints or exits.
//
// cublasCheck/cudnnCheck/ncclCheck name their library's symbols only when used, so a file includes just the
// library headers it calls (comm_nccl.cu needs no cuDNN, the backend no NCCL).
#pragma once
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#ifdef __cplusplus
}
#endif

// on_fail runs before the status is returned (e.g. to clear CUDA's last-error slot).
#define GPU_CHECK_(status, type, call, ok, errstr, on_fail)                                                 \
    do {                                                                                                   \
        type rc__ = (call);                                                                                \
        if (rc__ != (ok)) {                                                                                \
            on_fail;                                                                                       \
            return ERR((status), "rank %d (%s): %s:%d: %s failed: %s", g_rank, g_host, __FILE__, __LINE__,  \
                       #call, errstr(rc__));                                                               \
        }                                                                                                  \
    } while (0)

// A failed runtime call also sets CUDA's "last error"; clear it so that the next launch check
// (cudaGetLastError after a kernel) does not report this old failure again under another name.
#define cudaCheck(call) GPU_CHECK_(ST_RUNTIME, cudaError_t, call, cudaSuccess, cudaGetErrorString, (void)cudaGetLastError())
#define cublasCheck(call) GPU_CHECK_(ST_RUNTIME, cublasStatus_t, call, CUBLAS_STATUS_SUCCESS, cublasGetStatusString, (void)0)
#define cudnnCheck(call) GPU_CHECK_(ST_RUNTIME, cudnnStatus_t, call, CUDNN_STATUS_SUCCESS, cudnnGetErrorString, (void)0)
// A remote or system error means a peer or the network failed (ST_COMM), anything else is ours.
#define ncclCheck(call)                                                                                    \
    GPU_CHECK_((rc__ == ncclRemoteError || rc__ == ncclSystemError) ? ST_COMM : ST_RUNTIME, ncclResult_t, call, \
               ncclSuccess, ncclGetErrorString, (void)0)

// After a kernel launch: a bad configuration is reported here, faults inside the kernel at the next sync.
#define cudaCheckLaunch() cudaCheck(cudaGetLastError())
