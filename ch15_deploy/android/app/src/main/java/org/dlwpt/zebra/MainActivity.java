// Chapter 15: run the CycleGAN generator on a phone with PyTorch Mobile (lite interpreter).
//
// Loads assets/cyclegan_mobile.ptl (written by ch15_deploy/export_mobile.py) and
// assets/horse.jpg, and on a tap turns the horse into a zebra. The generator takes a
// 1 x 3 x H x W float tensor in [0, 1] (H and W multiples of 4; 228 x 228 here) and returns
// 1 x 3 x H x W in [-1, 1], which is mapped back to 0..255 pixels.
package org.dlwpt.zebra;

import android.app.Activity;
import android.content.Context;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.os.Bundle;
import android.os.SystemClock;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.TextView;

import org.pytorch.IValue;
import org.pytorch.LiteModuleLoader;
import org.pytorch.Module;
import org.pytorch.Tensor;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;

public class MainActivity extends Activity {
    private static final int SIZE = 228;               // as traced; a multiple of 4

    private Module generator;
    private Bitmap horse;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        TextView status = findViewById(R.id.status);
        try {
            horse = Bitmap.createScaledBitmap(
                    BitmapFactory.decodeStream(getAssets().open("horse.jpg")), SIZE, SIZE, true);
            // The native loader needs a real file path: copy the asset out once.
            generator = LiteModuleLoader.load(assetFilePath(this, "cyclegan_mobile.ptl"));
        } catch (IOException e) {
            status.setText("cannot load the assets: " + e.getMessage());
            return;
        }
        ((ImageView) findViewById(R.id.input_image)).setImageBitmap(horse);
        Button button = findViewById(R.id.zebrify);
        button.setOnClickListener(v -> {
            long start = SystemClock.elapsedRealtime();
            Bitmap zebra = toBitmap(generator.forward(IValue.from(toTensor(horse))).toTensor());
            ((ImageView) findViewById(R.id.output_image)).setImageBitmap(zebra);
            status.setText("generator: " + (SystemClock.elapsedRealtime() - start) + " ms");
        });
    }

    // RGB pixels -> 1 x 3 x H x W floats in [0, 1], channel planes one after the other.
    // (TensorImageUtils.bitmapToFloat32Tensor would also subtract a mean and divide by a
    // standard deviation; the generator wants plain [0, 1], as in the Python code.)
    static Tensor toTensor(Bitmap bitmap) {
        int w = bitmap.getWidth(), h = bitmap.getHeight(), plane = w * h;
        int[] pixels = new int[plane];
        bitmap.getPixels(pixels, 0, w, 0, 0, w, h);
        float[] data = new float[3 * plane];
        for (int i = 0; i < plane; i++) {
            data[i] = ((pixels[i] >> 16) & 0xff) / 255.0f;
            data[plane + i] = ((pixels[i] >> 8) & 0xff) / 255.0f;
            data[2 * plane + i] = (pixels[i] & 0xff) / 255.0f;
        }
        return Tensor.fromBlob(data, new long[] {1, 3, h, w});
    }

    // 1 x 3 x H x W in [-1, 1] -> an ARGB bitmap, through (x + 1) / 2 * 255.
    static Bitmap toBitmap(Tensor tensor) {
        long[] shape = tensor.shape();
        int h = (int) shape[2], w = (int) shape[3], plane = w * h;
        float[] data = tensor.getDataAsFloatArray();
        int[] pixels = new int[plane];
        for (int i = 0; i < plane; i++) {
            int r = toByte(data[i]), g = toByte(data[plane + i]), b = toByte(data[2 * plane + i]);
            pixels[i] = 0xff000000 | (r << 16) | (g << 8) | b;
        }
        return Bitmap.createBitmap(pixels, w, h, Bitmap.Config.ARGB_8888);
    }

    private static int toByte(float x) {
        return Math.max(0, Math.min(255, Math.round((x + 1f) / 2f * 255f)));
    }

    // The path of a copy of an asset in the app's files folder (made on first use).
    static String assetFilePath(Context context, String name) throws IOException {
        File file = new File(context.getFilesDir(), name);
        if (file.exists() && file.length() > 0) {
            return file.getAbsolutePath();
        }
        try (InputStream in = context.getAssets().open(name);
             OutputStream out = new FileOutputStream(file)) {
            byte[] buffer = new byte[1 << 16];
            for (int n; (n = in.read(buffer)) > 0; ) {
                out.write(buffer, 0, n);
            }
        }
        return file.getAbsolutePath();
    }
}
