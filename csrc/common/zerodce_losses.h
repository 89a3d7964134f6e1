// Zero-DCE pooled statistics: what L_spa, L_exp and L_color need from the full-size images.
//   pooled[b, i, j]   = mean over the 3 channels and the 4x4 cell (4i..4i+3, 4j..4j+3)   (AvgPool2d(4), floor)
//   channel_mean[b,c] = mean over all H x W pixels of channel c
// The 16x16 exposure pool is the 4x4 average of `pooled` (floor(floor(H/4)/4) = floor(H/16)), so one
// read of (enhanced, low) serves all three losses: 24 bytes/pixel in float32 (two 3-channel images).
// Backward (one write pass): d enhanced[b,c,y,x] = g_mean[b,c] / (H W) + g_pooled[b, y/4, x/4] / 48
// inside the pooled region (y < 4 H/4, x < 4 W/4), only the first term outside it; d low likewise
// without the channel-mean term.
#pragma once

#include "common/host_device.h"

namespace lowlight_fast {
namespace pooled {

constexpr int kPool = 4;                       // L_spa's AvgPool2d(4)
constexpr int kChannels = 3;                   // RGB
constexpr int kCell = kPool * kPool * kChannels;  // values averaged into one pooled entry (48)

// The gradient of one pixel from the pooled-map gradient (already divided by kCell, 0 outside the
// pooled region) and the channel-mean gradient (already divided by H W).
template <typename T>
LLF_HD T pixel_grad(T g_cell, T g_channel) {
  return g_cell + g_channel;
}

}  // namespace pooled
}  // namespace lowlight_fast
