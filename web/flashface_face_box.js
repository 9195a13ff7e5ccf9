// FlashFace: the face box drawn on the nodes that place a face (Generator, Apply, Person).
//
// A picture under the node's widgets shows the image frame at the width:height the node generates
// for, the face box of face_x1..face_y2, and the square FlashFace really uses (the box's longer
// side, anchored at its top-left corner, as flashface/sampling/mask.py computes it). Dragging the
// box moves it, dragging a corner resizes it, dragging elsewhere in the frame draws a new one; the
// four widgets are set and stay the only source of truth (the picture is not saved, so workflows
// and API prompts are unchanged). A Person also shows the boxes of the people chained before it.
//
// Frontend APIs used: app.registerExtension + beforeRegisterNodeDef (wrapping onNodeCreated),
// LGraphNode.addCustomWidget with a canvas widget (draw, computeSize, onPointerDown with the
// canvas pointer's onDrag/finally, serialize false), graph links and getNodeById. Where any is
// missing the nodes keep their plain widgets.

import { app } from "../../scripts/app.js";

const PLACING_NODES = new Set(["FlashFace_Generator", "FlashFace_Apply", "FlashFace_Person"]);
const CORNERS = ["face_x1", "face_y1", "face_x2", "face_y2"];
const PREVIEW_NAME = "face_box_preview";
const DEFAULT_SIZE = [768, 768]; // GenerationSettings' width and height
const PREVIEW_HEIGHT = 180;
const MARGIN = 15;
const CAPTION_HEIGHT = 16;
const HANDLE = 7; // how near a corner (graph units) grabs it
const STEP = 0.01; // the face box widgets' step
const COLOURS = ["#4caf50", "#2196f3", "#ff9800", "#e91e63", "#9c27b0", "#00bcd4"];
const MAX_HOPS = 8; // how far the frame size is looked for downstream

let warned = false;
function warnOnce(error) {
    if (!warned) {
        warned = true;
        console.warn("FlashFace face box preview disabled:", error);
    }
}

function widgetOf(node, name) {
    return (node.widgets || []).find((w) => w.name === name);
}

function linkOf(graph, id) {
    const links = graph?.links;
    if (!links || id == null) return null;
    return typeof links.get === "function" ? links.get(id) : links[id];
}

function originOf(node, inputName) {
    const input = (node.inputs || []).find((i) => i.name === inputName);
    const link = input ? linkOf(node.graph, input.link) : null;
    let origin = link ? node.graph.getNodeById(link.origin_id) : null;
    const seen = new Set();
    while (origin && origin.type === "Reroute" && !seen.has(origin.id)) {
        seen.add(origin.id);
        const through = origin.inputs?.[0] ? linkOf(origin.graph, origin.inputs[0].link) : null;
        origin = through ? origin.graph.getNodeById(through.origin_id) : null;
    }
    return origin;
}

function sizeFrom(node) {
    const width = Number(widgetOf(node, "width")?.value);
    const height = Number(widgetOf(node, "height")?.value);
    return width > 0 && height > 0 ? [width, height] : null;
}

/** The width and height the node generates for: its own widgets (the Generator), else the first
 * Generator or sampler latent found downstream (Person -> Generator, Apply -> KSampler <- Empty
 * Latent Image), else the default size. */
function frameSize(node) {
    const own = sizeFrom(node);
    if (own) return own;
    const queue = [[node, 0]];
    const seen = new Set([node.id]);
    while (queue.length) {
        const [current, hops] = queue.shift();
        if (hops >= MAX_HOPS) continue;
        for (const output of current.outputs || []) {
            for (const id of output.links || []) {
                const link = linkOf(current.graph, id);
                const target = link ? current.graph.getNodeById(link.target_id) : null;
                if (!target || seen.has(target.id)) continue;
                seen.add(target.id);
                const size = target.type === "FlashFace_Generator" ? sizeFrom(target) : null;
                const latent = originOf(target, "latent_image");
                const found = size || (latent ? sizeFrom(latent) : null);
                if (found) return found;
                queue.push([target, hops + 1]);
            }
        }
    }
    return DEFAULT_SIZE;
}

/** The Persons chained into `node`'s people input, first listed first. */
function earlierPeople(node) {
    const chain = [];
    const seen = new Set([node.id]);
    let current = originOf(node, "people");
    while (current && current.type === "FlashFace_Person" && !seen.has(current.id)) {
        seen.add(current.id);
        chain.unshift(current);
        current = originOf(current, "people");
    }
    return chain;
}

function boxOf(node) {
    const values = CORNERS.map((name) => Number(widgetOf(node, name)?.value));
    return values.every((v) => Number.isFinite(v)) ? values : null;
}

function placedByMask(node) {
    return originOf(node, "face_mask") != null;
}

/** The box and the square FlashFace uses, in image pixels (as flashface.sampling.mask.face_square). */
function pixelPlacement(box, [width, height]) {
    const [x1, y1, x2, y2] = box;
    const left = Math.floor(x1 * width);
    const top = Math.floor(y1 * height);
    const right = Math.floor(x2 * width);
    const bottom = Math.floor(y2 * height);
    return { box: [left, top, right - left, bottom - top], square: [left, top, Math.max(right - left, bottom - top)] };
}

function drawPlacement(ctx, frame, scale, box, colour, size, faint) {
    const [fx, fy, fw, fh] = frame;
    const { box: rect, square } = pixelPlacement(box, size);
    ctx.save();
    ctx.beginPath();
    ctx.rect(fx, fy, fw, fh);
    ctx.clip();
    ctx.globalAlpha = faint ? 0.35 : 1;
    const [left, top, side] = square;
    ctx.fillStyle = colour + "40";
    ctx.fillRect(fx + left * scale, fy + top * scale, side * scale, side * scale);
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1;
    ctx.strokeRect(fx + left * scale, fy + top * scale, side * scale, side * scale);
    ctx.setLineDash([]);
    ctx.lineWidth = 2;
    ctx.strokeRect(fx + rect[0] * scale, fy + rect[1] * scale, rect[2] * scale, rect[3] * scale);
    ctx.restore();
    return {
        box: [fx + rect[0] * scale, fy + rect[1] * scale, rect[2] * scale, rect[3] * scale],
        square: [fx + left * scale, fy + top * scale, side * scale],
    };
}

function drawPreview(ctx, node, width, y) {
    const size = frameSize(node);
    const areaWidth = Math.max(width - 2 * MARGIN, 10);
    const areaHeight = PREVIEW_HEIGHT - CAPTION_HEIGHT - 8;
    const scale = Math.min(areaWidth / size[0], areaHeight / size[1]);
    const frame = [MARGIN + (areaWidth - size[0] * scale) / 2, y + 4, size[0] * scale, size[1] * scale];
    ctx.save();
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(...frame);
    ctx.strokeStyle = "#777";
    ctx.lineWidth = 1;
    ctx.strokeRect(...frame);

    // A Person's chain is the people before it; the Generator's or Apply's, the people connected.
    const isPerson = node.type === "FlashFace_Person";
    const chain = earlierPeople(node);
    const shown = [];
    chain.forEach((person, index) => {
        const box = boxOf(person);
        if (box && box.some((v) => v) && !placedByMask(person)) {
            const colour = COLOURS[index % COLOURS.length];
            shown.push({ id: person.id, colour, ...drawPlacement(ctx, frame, scale, box, colour, size, false) });
        }
    });
    const box = boxOf(node);
    const byMask = placedByMask(node);
    const byPeople = !isPerson && chain.length > 0;
    const hint = box && box.some((v) => v);
    let drawn = { box: null, square: null };
    if (hint) {
        const colour = COLOURS[(isPerson ? chain.length : 0) % COLOURS.length];
        drawn = drawPlacement(ctx, frame, scale, box, byMask || byPeople ? "#999999" : colour, size, byMask || byPeople);
        if (!byMask && !byPeople) {
            ctx.fillStyle = colour;
            const [bx, by, bw, bh] = drawn.box;
            for (const [cx, cy] of [[bx, by], [bx + bw, by], [bx, by + bh], [bx + bw, by + bh]]) {
                ctx.fillRect(cx - 3, cy - 3, 6, 6);
            }
        }
    }
    const state = byPeople
        ? "placed by the people connected"
        : byMask
          ? "face_mask connected: it places the face"
          : hint
            ? "drag the box or a corner"
            : "all 0: no position hint (drag to draw a box)";
    ctx.fillStyle = "#aaa";
    ctx.font = "11px sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(`${size[0]}×${size[1]} · ${state}`, MARGIN, y + PREVIEW_HEIGHT - CAPTION_HEIGHT / 2 - 2);
    ctx.restore();
    return { frame, size, scale, ...drawn, others: shown, editable: !byMask && !byPeople };
}

function rounded(value) {
    return Number((Math.round(Math.min(Math.max(value, 0), 1) / STEP) * STEP).toFixed(2));
}

function setBox(node, [x1, y1, x2, y2]) {
    const values = [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)].map(rounded);
    CORNERS.forEach((name, index) => {
        const widget = widgetOf(node, name);
        const value = values[index];
        if (!widget || widget.value === value) return;
        const old = widget.value;
        widget.value = value;
        widget.callback?.(value, app.canvas, node);
        node.onWidgetChanged?.(name, value, old, widget);
    });
    node.setDirtyCanvas?.(true, true);
}

/** Where a press lands: a corner of the box ([x index, y index] into the box), inside it, or
 * elsewhere in the frame. */
function pressTarget(geometry, [x, y]) {
    const [fx, fy, fw, fh] = geometry.frame;
    if (x < fx || y < fy || x > fx + fw || y > fy + fh) return null;
    if (geometry.box) {
        const [bx, by, bw, bh] = geometry.box;
        for (const [cx, cy, xi, yi] of [
            [bx, by, 0, 1],
            [bx + bw, by, 2, 1],
            [bx, by + bh, 0, 3],
            [bx + bw, by + bh, 2, 3],
        ]) {
            if (Math.abs(x - cx) <= HANDLE && Math.abs(y - cy) <= HANDLE) return { corner: [xi, yi] };
        }
        if (x >= bx && x <= bx + bw && y >= by && y <= by + bh) return { move: true };
    }
    return { draw: true };
}

function startDrag(widget, pointer, node) {
    const geometry = widget.geometry;
    const down = pointer.eDown;
    if (!geometry || !geometry.editable || !down) return false;
    const local = (event) => [event.canvasX - node.pos[0], event.canvasY - node.pos[1]];
    const fraction = ([x, y]) => [
        (x - geometry.frame[0]) / geometry.frame[2],
        (y - geometry.frame[1]) / geometry.frame[3],
    ];
    const start = local(down);
    const target = pressTarget(geometry, start);
    if (!target) return false;
    const box = boxOf(node) || [0, 0, 0, 0];
    const [startX, startY] = fraction(start);
    pointer.onDrag = (event) => {
        const [x, y] = fraction(local(event));
        if (target.corner) {
            const next = [...box];
            next[target.corner[0]] = x;
            next[target.corner[1]] = y;
            setBox(node, next);
        } else if (target.move) {
            const width = box[2] - box[0];
            const height = box[3] - box[1];
            const left = Math.min(Math.max(box[0] + x - startX, 0), 1 - width);
            const top = Math.min(Math.max(box[1] + y - startY, 0), 1 - height);
            setBox(node, [left, top, left + width, top + height]);
        } else {
            setBox(node, [startX, startY, x, y]);
        }
    };
    pointer.finally = () => {
        node.graph?.change?.();
    };
    return true;
}

function addPreview(node) {
    if (typeof node.addCustomWidget !== "function" || !CORNERS.every((name) => widgetOf(node, name))) return;
    const preview = {
        name: PREVIEW_NAME,
        type: "flashface_face_box",
        value: null,
        serialize: false,
        options: { serialize: false },
        geometry: null, // what the last draw placed, in node-local units: frame, box, square, others
        computeSize(width) {
            return [width, PREVIEW_HEIGHT];
        },
        draw(ctx, drawnNode, width, y) {
            try {
                this.geometry = drawPreview(ctx, drawnNode, width, y);
            } catch (error) {
                this.geometry = null;
                warnOnce(error);
            }
        },
        onPointerDown(pointer, pressedNode) {
            try {
                return startDrag(this, pointer, pressedNode);
            } catch (error) {
                warnOnce(error);
                return false;
            }
        },
    };
    node.addCustomWidget(preview);
    const [width, height] = node.computeSize?.() || [];
    if (width && height) node.setSize?.([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
}

app.registerExtension({
    name: "FlashFace.FaceBoxPreview",
    beforeRegisterNodeDef(nodeType, nodeData) {
        if (!PLACING_NODES.has(nodeData?.name)) return;
        const created = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            const result = created?.apply(this, arguments);
            try {
                addPreview(this);
            } catch (error) {
                warnOnce(error);
            }
            return result;
        };
    },
});
