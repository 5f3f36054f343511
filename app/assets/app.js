// Shows the popular products from the API (served from the Redis cache).
"use strict";

async function showPopular() {
  const list = document.getElementById("popular");
  try {
    const response = await fetch("/api/products/popular?limit=10");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const products = await response.json();
    list.replaceChildren(
      ...products.map((product) => {
        const item = document.createElement("li");
        item.textContent = `${product.name} (${product.category}), ${product.sold} sold`;
        return item;
      }),
    );
  } catch (error) {
    list.replaceChildren(Object.assign(document.createElement("li"), {
      textContent: `Could not load products: ${error.message}`,
    }));
  }
}

document.addEventListener("DOMContentLoaded", showPopular);
